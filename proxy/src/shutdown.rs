//! One shutdown signal per worker: idle connections wait on it instead of
//! each waking every 250 ms to look at the process's shutdown flag (2000 idle
//! connections were 8000 wake-ups a second of nothing). The worker's own
//! loop, which watches the flag anyway for its heartbeat, fires it once.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

/// Fired once, by the worker thread that owns it; waited on by its tasks.
#[derive(Debug, Default)]
pub struct ShutdownSignal {
    fired: Cell<bool>,
    next: Cell<u64>,
    waiting: RefCell<HashMap<u64, Waker>>,
}

impl ShutdownSignal {
    /// Whether [`fire`](Self::fire) was called.
    pub fn fired(&self) -> bool {
        self.fired.get()
    }

    /// Wake every waiter, now and later.
    pub fn fire(&self) {
        self.fired.set(true);
        let waiting: Vec<Waker> = self.waiting.borrow_mut().drain().map(|(_, w)| w).collect();
        for w in waiting {
            w.wake();
        }
    }

    /// Resolves once the signal has fired. Dropping it before unregisters
    /// it, so a connection that waits once per request leaves nothing behind.
    pub fn wait(&self) -> Wait<'_> {
        Wait {
            signal: self,
            key: None,
        }
    }

    /// Waiters registered now (tests).
    pub fn waiting(&self) -> usize {
        self.waiting.borrow().len()
    }
}

/// The future of [`ShutdownSignal::wait`].
#[derive(Debug)]
pub struct Wait<'a> {
    signal: &'a ShutdownSignal,
    key: Option<u64>,
}

impl Future for Wait<'_> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.signal.fired.get() {
            if let Some(k) = self.key.take() {
                self.signal.waiting.borrow_mut().remove(&k);
            }
            return Poll::Ready(());
        }
        let key = match self.key {
            Some(k) => k,
            None => {
                let k = self.signal.next.get();
                self.signal.next.set(k.wrapping_add(1));
                self.key = Some(k);
                k
            }
        };
        self.signal
            .waiting
            .borrow_mut()
            .insert(key, cx.waker().clone());
        Poll::Pending
    }
}

impl Drop for Wait<'_> {
    fn drop(&mut self) {
        if let Some(k) = self.key.take() {
            self.signal.waiting.borrow_mut().remove(&k);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::Wake;

    struct Count(AtomicUsize);
    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn waiters_are_woken_once_fired_and_dropped_ones_leave_nothing() {
        let s = ShutdownSignal::default();
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let waker = Waker::from(count.clone());
        let mut cx = Context::from_waker(&waker);
        let mut a = Box::pin(s.wait());
        assert!(a.as_mut().poll(&mut cx).is_pending());
        assert!(a.as_mut().poll(&mut cx).is_pending());
        {
            let mut b = Box::pin(s.wait());
            assert!(b.as_mut().poll(&mut cx).is_pending());
            assert_eq!(s.waiting(), 2);
        }
        // Polled twice, dropped once: one registration left.
        assert_eq!(s.waiting(), 1);
        s.fire();
        assert_eq!(count.0.load(Ordering::SeqCst), 1);
        assert!(a.as_mut().poll(&mut cx).is_ready());
        assert!(Box::pin(s.wait()).as_mut().poll(&mut cx).is_ready());
        assert_eq!(s.waiting(), 0);
    }
}
