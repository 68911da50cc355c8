//! Helpers for tests/operability.rs: which series a scrape holds, and config reloads of an
//! in-process sidecar.

use super::Sidecar;

/// Whether the scrape has a sample of `name` with every one of `labels` (absent != 0).
pub fn has_series(text: &str, name: &str, labels: &[(&str, &str)]) -> bool {
    text.lines().filter(|l| !l.starts_with('#')).any(|l| {
        let series = l.rsplit_once(' ').map_or(l, |(s, _)| s);
        let (n, rest) = series.split_once('{').unwrap_or((series, ""));
        n == name
            && labels
                .iter()
                .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")))
    })
}

/// Rewrites the sidecar's config file and reloads it, as SIGHUP does.
pub fn reload(sidecar: &Sidecar, yaml: &str) {
    std::fs::write(&sidecar.config_path, yaml).expect("rewrite config");
    sidecar.app.reload().expect("the new config is valid");
}
