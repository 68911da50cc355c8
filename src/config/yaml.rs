//! The one place that knows which YAML library reads the config file.
//!
//! It turns the library's errors into `ConfigError`s with the field path (from
//! `serde_path_to_error`) and, where the parser knows it, the line and column. Replacing the
//! YAML library means changing this file only.
//!
//! Before the library sees the text, [`check_shape`] refuses files it would be slow on:
//! libyaml's flow collections (`[[[[...`) cost quadratic time in their depth (block nesting does not) (40 KB of
//! brackets took 12 s in a debug `check`, 200 KB took 18 s in release), so the text is
//! bounded in size and nesting depth first, which takes one linear pass.

use serde::de::DeserializeOwned;

use super::ConfigError;

/// The largest config file read, in bytes. The biggest file we know of in real use is a
/// 3.4 MB generated one with 40k routes; 8 MiB leaves room for that and still parses in
/// about a second, where an unbounded read would happily load `/dev/zero`.
pub const MAX_FILE_BYTES: u64 = 8 << 20;

/// The deepest nesting of YAML flow collections (`[` and `{`) accepted. The schema itself
/// never goes deeper than 6; 64 keeps the parser far from its quadratic zone. Block
/// nesting (indentation) costs linear time and is left alone.
pub const MAX_DEPTH: usize = 64;

/// Parses YAML text into `T`; an empty document means "all defaults".
pub fn parse<T: DeserializeOwned + Default>(text: &str) -> Result<T, ConfigError> {
    if text.lines().all(|l| {
        let l = l.trim();
        l.is_empty() || l.starts_with('#') || l == "---"
    }) {
        return Ok(T::default());
    }
    check_shape(text)?;
    let deserializer = serde_yaml::Deserializer::from_str(text);
    serde_path_to_error::deserialize(deserializer).map_err(|err| {
        let path = err.path().to_string();
        let inner = err.into_inner();
        let location = inner.location().map(|l| (l.line(), l.column()));
        let field = if path == "." { String::new() } else { path };
        let message = clean_message(&inner.to_string());
        match duplicate_key(&message) {
            Some(key) => duplicate_error(text, key, field, location, &message),
            None => ConfigError::new(field, message).at(location),
        }
    })
}

/// Refuses text over [`MAX_FILE_BYTES`] or with flow collections nested deeper than
/// [`MAX_DEPTH`], naming the line.
pub fn check_shape(text: &str) -> Result<(), ConfigError> {
    if text.len() as u64 > MAX_FILE_BYTES {
        return Err(too_large());
    }
    let mut flow = 0usize;
    for (i, line) in text.lines().enumerate() {
        let deepest;
        (flow, deepest) = flow_depth(line, flow);
        if deepest > MAX_DEPTH {
            return Err(ConfigError::new(
                "",
                format!(
                    "nesting is deeper than {MAX_DEPTH} levels; no outrigger setting needs that"
                ),
            )
            .at(Some((i + 1, 1))));
        }
    }
    Ok(())
}

/// The error for a file over [`MAX_FILE_BYTES`].
pub fn too_large() -> ConfigError {
    ConfigError::new(
        "",
        format!("the file is over {MAX_FILE_BYTES} bytes (8 MiB), the limit for a config file"),
    )
}

/// Flow-collection depth after `line` and the deepest it reached on the way, outside quotes
/// and comments. Block scalars are not
/// told apart, which only matters for a body nested deeper than `MAX_DEPTH` written inline
/// (use `body_file` for that).
fn flow_depth(line: &str, mut depth: usize) -> (usize, usize) {
    let mut deepest = depth;
    let mut quote: Option<char> = None;
    let mut prev = ' ';
    for c in line.chars() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '\'' | '"') => quote = Some(c),
            (None, '#') if prev == ' ' || prev == '\t' => break,
            (None, '[' | '{') => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            (None, ']' | '}') => depth = depth.saturating_sub(1),
            _ => {}
        }
        prev = c;
    }
    (depth, deepest)
}

/// The key of serde's "duplicate field `KEY`" message.
fn duplicate_key(message: &str) -> Option<&str> {
    message
        .strip_prefix("duplicate field `")?
        .split_once('`')
        .map(|(key, _)| key)
}

/// serde_yaml reports a repeated key at the start of the mapping that holds it (1:1 for a
/// top-level key); this finds the repeated key itself: the second line, among the mapping's
/// own lines (same indentation as the mapping's first key), that starts with `KEY:`.
fn duplicate_error(
    text: &str,
    key: &str,
    field: String,
    map_at: Option<(usize, usize)>,
    message: &str,
) -> ConfigError {
    let (start_line, col) = map_at.unwrap_or((1, 1));
    let indent = col.saturating_sub(1);
    let mut seen = 0;
    for (i, line) in text.lines().enumerate().skip(start_line.saturating_sub(1)) {
        let own = if i + 1 == start_line {
            line.get(indent..).unwrap_or("")
        } else {
            let trimmed = line.trim_start();
            let this_indent = line.len() - trimmed.len();
            if trimmed.is_empty() || trimmed.starts_with('#') || this_indent > indent {
                continue;
            }
            if this_indent < indent {
                break;
            }
            trimmed
        };
        let own = own.trim_start_matches("- ");
        let named = [
            format!("{key}:"),
            format!("\"{key}\":"),
            format!("'{key}':"),
        ];
        if named.iter().any(|k| own.starts_with(k.as_str())) {
            seen += 1;
            if seen == 2 {
                let path = if field.is_empty() {
                    key.to_owned()
                } else {
                    format!("{field}.{key}")
                };
                return ConfigError::new(
                    path,
                    format!("`{key}` is given twice in the same mapping"),
                )
                .at(Some((i + 1, indent + 1)));
            }
        }
    }
    ConfigError::new(field, message.to_owned()).at(map_at)
}

/// serde_yaml repeats the path and the position in its message; we print both ourselves.
fn clean_message(message: &str) -> String {
    let without_position = match message.rfind(" at line ") {
        Some(i) => &message[..i],
        None => message,
    };
    // "routes[0].retry: unknown field ..." -> "unknown field ..."
    let message = match without_position.split_once(": ") {
        Some((head, rest)) if !head.contains(' ') => rest,
        _ => without_position,
    };
    if message.starts_with("unknown field `<<`") {
        return "YAML merge keys (`<<`) are not supported: repeat the keys, or put what routes \
                share under `defaults`"
            .to_owned();
    }
    message.to_owned()
}
