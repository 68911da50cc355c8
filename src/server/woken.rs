//! A future polled only when it asked to be: [`Woken`].
//!
//! A connection's task waits on three things at once (`server::accept`): hyper's
//! connection, the drain signal and the watchdog's timer. `tokio::select!` polls every
//! branch each time the task wakes, and the task wakes several times per request (the
//! request's bytes, the upstream's answer, the socket taking the response), almost always
//! for hyper. Polling the drain signal locks its waiter list and re-registers the task,
//! polling the timer registers it again, for two branches with nothing to say. Wrapped in
//! [`Woken`], they are polled again only once their own waker fired: a poll in between
//! costs a waker comparison and one atomic swap. That saved about 1,000 instructions per
//! request (callgrind, `bench/per_request.sh`: 54,526 -> 53,518).

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};

use pin_project_lite::pin_project;

pin_project! {
    /// `inner`, polled at first and then only after it woke its waker.
    pub struct Woken<F> {
        #[pin]
        inner: F,
        flag: Arc<Flag>,
        // `flag` as a waker, handed to `inner`.
        waker: Waker,
        // The task's waker last handed to `flag`, kept here to compare without a lock.
        task: Option<Waker>,
    }
}

/// Whether `inner` woke since it was last polled, and the task to wake when it does.
struct Flag {
    woken: AtomicBool,
    task: Mutex<Option<Waker>>,
}

impl Wake for Flag {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        let task = self.task.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(task) = task.as_ref() {
            task.wake_by_ref();
        }
    }
}

impl<F> Woken<F> {
    pub fn new(inner: F) -> Self {
        let flag = Arc::new(Flag {
            // Polled at once the first time, so that it can register its own wakers.
            woken: AtomicBool::new(true),
            task: Mutex::new(None),
        });
        Woken {
            inner,
            waker: Waker::from(Arc::clone(&flag)),
            flag,
            task: None,
        }
    }
}

impl<F: Future> Future for Woken<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        // The task to wake is stored before the flag is read: a wake that comes between
        // the two then finds it.
        if !this.task.as_ref().is_some_and(|t| t.will_wake(cx.waker())) {
            let mut task = this.flag.task.lock().unwrap_or_else(|e| e.into_inner());
            *task = Some(cx.waker().clone());
            *this.task = Some(cx.waker().clone());
        }
        if !this.flag.woken.swap(false, Ordering::AcqRel) {
            return Poll::Pending;
        }
        this.inner.poll(&mut Context::from_waker(this.waker))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    /// Counts its polls; ready once `open` is set (and it was polled after its waker).
    struct Gate {
        polls: Arc<AtomicUsize>,
        open: Arc<AtomicBool>,
        waker: Arc<Mutex<Option<Waker>>>,
    }

    impl Future for Gate {
        type Output = ();
        fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
            self.polls.fetch_add(1, Ordering::Relaxed);
            if self.open.load(Ordering::Acquire) {
                return Poll::Ready(());
            }
            *self.waker.lock().unwrap() = Some(cx.waker().clone());
            Poll::Pending
        }
    }

    #[tokio::test]
    async fn polled_only_after_its_own_wake_and_never_loses_one() {
        let polls = Arc::new(AtomicUsize::new(0));
        let open = Arc::new(AtomicBool::new(false));
        let waker = Arc::new(Mutex::new(None::<Waker>));
        let mut woken = Box::pin(Woken::new(Gate {
            polls: Arc::clone(&polls),
            open: Arc::clone(&open),
            waker: Arc::clone(&waker),
        }));
        let noop = Waker::noop();
        let mut cx = Context::from_waker(noop);
        assert!(woken.as_mut().poll(&mut cx).is_pending());
        assert_eq!(polls.load(Ordering::Relaxed), 1);
        // Woken for something else: the inner future is not polled.
        for _ in 0..5 {
            assert!(woken.as_mut().poll(&mut cx).is_pending());
        }
        assert_eq!(polls.load(Ordering::Relaxed), 1);
        // Its own waker fires (from another thread): polled again, and ready.
        open.store(true, Ordering::Release);
        let inner_waker = waker.lock().unwrap().take().unwrap();
        std::thread::spawn(move || inner_waker.wake())
            .join()
            .unwrap();
        assert!(woken.as_mut().poll(&mut cx).is_ready());
        assert_eq!(polls.load(Ordering::Relaxed), 2);
    }

    #[tokio::test]
    async fn its_wake_wakes_the_task() {
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let waiter = tokio::spawn(Woken::new(rx));
        tokio::task::yield_now().await;
        tx.send(()).unwrap();
        tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
            .await
            .expect("the task was woken")
            .unwrap()
            .unwrap();
    }
}
