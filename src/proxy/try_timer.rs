//! The per-try timeout's timer, reused from one attempt to the next.
//!
//! `tokio::time::timeout_at` makes a timer for every attempt: the first poll inserts it in
//! the runtime's timer wheel and dropping it takes it out again, each under the wheel's
//! lock (about 350 instructions per request more than reusing it, callgrind,
//! `docs/benchmarks.md`; the lock's atomics cost more than their count). Nearly every
//! attempt ends long before its timeout, so here an attempt's timer goes back to a small
//! per-thread stack when the attempt ends, still in the wheel, and the next attempt moves
//! its deadline. A later deadline is one atomic store (tokio's `Sleep::reset` extends the
//! entry in place; when the old deadline comes, the wheel files it again under the new one),
//! so a busy proxy touches the wheel about once per timer per `per_try_timeout`, not twice
//! per request. An earlier deadline (another route's shorter timeout) files it again.
//!
//! - The timer is taken only when the request was not answered on its first poll, as
//!   `timeout_at` does.
//! - A timer belongs to the runtime that made it, so the stack is emptied when its thread
//!   runs another runtime (tests, the probe command); reused there, it would panic.
//! - A spare timer whose deadline passes while it is spare wakes the task that used it
//!   last, once: a spurious wake-up, which tasks ignore. It stops holding that waker then.
//! - The spare taken is the one, among the newest few, with the latest deadline not later
//!   than the new one, so that it only moves later: a request that holds two (a hedge's
//!   and the per-try one) would otherwise swap them from one request to the next.
//! - At most [`SPARE`] timers per thread; the rest are dropped as before. What spares
//!   hold: the waker of the task that used each last, until its old deadline passes (a
//!   finished task's memory, up to `per_try_timeout`), and a handle on their runtime, so a
//!   runtime that ends while a thread that outlives it holds spares is freed only when that
//!   thread ends or another runtime takes a timer there (tests, not the one runtime of the
//!   binary).

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::runtime::{Handle, Id};
use tokio::time::{Instant, Sleep};

/// Spare timers kept per thread: about as many as attempts in flight on it at once.
pub const SPARE: usize = 64;

/// How many of the newest spares are looked at for one that only moves later.
const LOOK: usize = 4;

type Timer = Pin<Box<Sleep>>;

struct Spare {
    /// The runtime the timers belong to.
    runtime: Option<Id>,
    timers: Vec<Timer>,
}

thread_local! {
    static SPARES: RefCell<Spare> = const {
        RefCell::new(Spare {
            runtime: None,
            timers: Vec::new(),
        })
    };
}

/// The timer elapsed before the future finished.
#[derive(Debug, PartialEq, Eq)]
pub struct Elapsed;

pin_project_lite::pin_project! {
    /// `future`, unless `until` comes first.
    pub struct Timeout<F> {
        #[pin]
        future: F,
        until: Instant,
        timer: Option<(Timer, Id)>,
    }

    impl<F> PinnedDrop for Timeout<F> {
        fn drop(this: Pin<&mut Self>) {
            if let Some((timer, runtime)) = this.project().timer.take() {
                give_back(timer, runtime);
            }
        }
    }
}

/// Runs `future` until `until`.
pub fn timeout_at<F: Future>(until: Instant, future: F) -> Timeout<F> {
    Timeout {
        future,
        until,
        timer: None,
    }
}

impl<F: Future> Future for Timeout<F> {
    type Output = Result<F::Output, Elapsed>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        use tokio::task::coop;
        let this = self.project();
        let had_budget = coop::has_budget_remaining();
        if let Poll::Ready(v) = this.future.poll(cx) {
            return Poll::Ready(Ok(v));
        }
        let (timer, _) = this.timer.get_or_insert_with(|| take(*this.until));
        // A future that used up the task's budget would keep the timer from being looked
        // at (a `Sleep` polled without budget is `Pending`), every time if it always does:
        // then the timer is polled unconstrained, as tokio's own `Timeout` does.
        let polled = match had_budget && !coop::has_budget_remaining() {
            true => Pin::new(&mut coop::unconstrained(timer.as_mut())).poll(cx),
            false => timer.as_mut().poll(cx),
        };
        match polled {
            Poll::Ready(()) => Poll::Ready(Err(Elapsed)),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// A timer for `until`: a spare one of this runtime moved there, else a new one.
fn take(until: Instant) -> (Timer, Id) {
    let runtime = Handle::current().id();
    let spare = SPARES
        .try_with(|spares| {
            let mut spares = spares.borrow_mut();
            if spares.runtime != Some(runtime) {
                // Another runtime's timers: never to be polled here.
                spares.timers.clear();
                spares.runtime = Some(runtime);
            }
            // Among the newest few, the one with the latest deadline not later than
            // `until`: moving it is the atomic store. A request with two timers at once (a
            // hedge's and the per-try one) would otherwise take each other's, and move one
            // of them earlier, every time.
            let timers = &mut spares.timers;
            let newest = timers.len().saturating_sub(LOOK);
            let fits = (newest..timers.len())
                .filter(|&i| timers[i].deadline() <= until)
                .max_by_key(|&i| timers[i].deadline());
            match fits {
                Some(i) => Some(timers.swap_remove(i)),
                None => timers.pop(),
            }
        })
        .ok()
        .flatten();
    match spare {
        Some(mut timer) => {
            timer.as_mut().reset(until);
            (timer, runtime)
        }
        None => (Box::pin(tokio::time::sleep_until(until)), runtime),
    }
}

fn give_back(timer: Timer, runtime: Id) {
    // Past the thread's end (its spares gone), the timer is simply dropped.
    let _ = SPARES.try_with(|spares| {
        let mut spares = spares.borrow_mut();
        if spares.runtime == Some(runtime) && spares.timers.len() < SPARE {
            spares.timers.push(timer);
        }
    });
}

/// Deadlines of the spare timers on this thread, oldest spare first (tests).
#[cfg(test)]
fn spare_deadlines() -> Vec<Instant> {
    SPARES.with(|spares| {
        spares
            .borrow()
            .timers
            .iter()
            .map(|t| t.deadline())
            .collect()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn spares() -> usize {
        spare_deadlines().len()
    }

    /// A future that finishes after `after`, so that its timer was taken (not ready at once).
    async fn answered_after(after: Duration) {
        tokio::time::sleep(after).await;
    }

    #[tokio::test]
    async fn a_reused_timer_fires_at_its_new_later_deadline_not_the_old_one() {
        let start = Instant::now();
        let first = timeout_at(
            start + Duration::from_millis(150),
            answered_after(Duration::from_millis(5)),
        );
        assert_eq!(first.await, Ok(()));
        assert_eq!(spares(), 1, "the first attempt's timer went back");
        let never = std::future::pending::<()>();
        let second = timeout_at(start + Duration::from_millis(400), never);
        let result = tokio::time::timeout(Duration::from_secs(5), second).await;
        assert_eq!(result, Ok(Err(Elapsed)), "the reused timer fired");
        assert_eq!(
            spares(),
            1,
            "the second attempt took the spare, and gave it back"
        );
        let waited = start.elapsed();
        assert!(
            waited >= Duration::from_millis(400),
            "fired at {waited:?}, before its deadline"
        );
    }

    #[tokio::test]
    async fn a_reused_timer_fires_at_an_earlier_deadline_too() {
        let start = Instant::now();
        let first = timeout_at(
            start + Duration::from_secs(30),
            answered_after(Duration::from_millis(5)),
        );
        assert_eq!(first.await, Ok(()));
        assert_eq!(spares(), 1);
        let second = timeout_at(
            start + Duration::from_millis(100),
            std::future::pending::<()>(),
        );
        let result = tokio::time::timeout(Duration::from_secs(5), second).await;
        assert_eq!(
            result,
            Ok(Err(Elapsed)),
            "fired at the earlier deadline, not the spare's"
        );
        assert!(start.elapsed() < Duration::from_secs(5));
    }

    #[tokio::test]
    async fn a_spare_is_taken_that_only_moves_later() {
        let start = Instant::now();
        let soon = start + Duration::from_secs(10);
        let late = start + Duration::from_secs(30);
        // One timer around another: the outer one goes back first, the inner one is newest.
        let inner = timeout_at(soon, answered_after(Duration::from_millis(5)));
        let outer = timeout_at(late, inner);
        assert_eq!(outer.await, Ok(Ok(())));
        assert_eq!(spare_deadlines(), [late, soon]);
        let later = start + Duration::from_secs(35);
        let third = timeout_at(later, answered_after(Duration::from_millis(5)));
        let left = spare_deadlines_while(third).await;
        assert_eq!(
            left,
            [soon],
            "took the latest deadline that only moves later"
        );
    }

    /// The spares' deadlines while `future` (which takes a timer) is pending.
    async fn spare_deadlines_while<F: Future>(future: F) -> Vec<Instant> {
        let mut future = std::pin::pin!(future);
        let polled = std::future::poll_fn(|cx| Poll::Ready(future.as_mut().poll(cx).is_ready()));
        assert!(!polled.await, "still pending, holding its timer");
        spare_deadlines()
    }

    /// A future that uses up the task's coop budget on every poll still times out.
    #[tokio::test]
    async fn a_future_that_uses_up_the_budget_still_times_out() {
        let hog = async {
            loop {
                tokio::task::coop::consume_budget().await;
            }
        };
        let until = Instant::now() + Duration::from_millis(50);
        let result = tokio::time::timeout(Duration::from_secs(5), timeout_at(until, hog)).await;
        assert_eq!(
            result,
            Ok(Err(Elapsed)),
            "the 50 ms timer fired, not the 5 s one"
        );
    }

    #[tokio::test]
    async fn a_future_ready_at_once_takes_no_timer() {
        let result = timeout_at(Instant::now(), async { 7 }).await;
        assert_eq!(result, Ok(7));
        assert_eq!(spares(), 0);
    }

    #[test]
    fn timers_of_a_runtime_that_ended_are_not_reused_by_the_next() {
        let run = |deadline_ms: u64| {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async {
                let until = Instant::now() + Duration::from_millis(deadline_ms);
                timeout_at(until, answered_after(Duration::from_millis(5))).await
            })
        };
        assert_eq!(run(10_000), Ok(()));
        assert_eq!(spares(), 1, "the first runtime's timer was kept");
        // Polled in the second runtime, the first one's timer would panic ("the runtime is
        // being shut down").
        assert_eq!(run(10_000), Ok(()));
        assert_eq!(
            spares(),
            1,
            "the stack now holds the second runtime's timer only"
        );
    }
}
