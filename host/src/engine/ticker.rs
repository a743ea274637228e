//! The epoch ticker: advances the engine's epoch every [`EPOCH_TICK`] while a
//! module runs, and sleeps while none does.
//!
//! Epoch interruption is how a call's deadline is enforced, so the epoch only
//! has to move while guest code runs. Ticking all the time cost an idle host
//! 100 wake-ups a second; now an idle host's ticker waits on a condition
//! variable. Every entry into guest code (instantiation, which may run a
//! start function, and every export call) holds a [`Running`] guard.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

/// How often the epoch advances while a module runs. A call's deadline is
/// rounded up to whole ticks, so a runaway module is stopped within its
/// timeout plus one tick.
pub(super) const EPOCH_TICK: Duration = Duration::from_millis(10);

/// Guest code running now, shared by the ticker and every store.
#[derive(Default)]
pub(crate) struct GuestActivity {
    running: AtomicUsize,
    /// Set by the ticker before it checks `running` to wait: only then does
    /// an entry pay for a wake-up (a system call), not on every call.
    parked: AtomicBool,
    /// Held while the ticker checks `running` and while a first entry wakes
    /// it, so that a wake-up cannot fall between the check and the wait.
    lock: Mutex<()>,
    wake: Condvar,
    stop: AtomicBool,
}

/// Counts guest code as running until dropped.
pub(crate) struct Running(Arc<GuestActivity>);

impl GuestActivity {
    /// Marks guest code as running; the first entry wakes the ticker.
    pub(crate) fn enter(self: &Arc<Self>) -> Running {
        // Sequentially consistent with the ticker's `parked` store and
        // `running` load: either it sees this entry, or this sees it parked.
        if self.running.fetch_add(1, Ordering::SeqCst) == 0 && self.parked.load(Ordering::SeqCst) {
            let _held = self.lock.lock().expect("the ticker lock guards no data");
            self.wake.notify_one();
        }
        Running(self.clone())
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.0.running.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The thread that advances the epoch; stops when dropped.
pub(super) struct Ticker {
    activity: Arc<GuestActivity>,
}

impl Ticker {
    pub(super) fn start(engine: wasmtime::Engine) -> Self {
        let activity = Arc::new(GuestActivity::default());
        let shared = activity.clone();
        std::thread::Builder::new()
            .name("offerd-epoch".into())
            .spawn(move || {
                loop {
                    {
                        let mut held = shared.lock.lock().expect("the ticker lock guards no data");
                        shared.parked.store(true, Ordering::SeqCst);
                        while shared.running.load(Ordering::SeqCst) == 0 && !shared.stop.load(Ordering::SeqCst) {
                            held = shared.wake.wait(held).expect("the ticker lock guards no data");
                        }
                        shared.parked.store(false, Ordering::SeqCst);
                    }
                    if shared.stop.load(Ordering::SeqCst) {
                        return;
                    }
                    std::thread::sleep(EPOCH_TICK);
                    engine.increment_epoch();
                }
            })
            .expect("spawning the epoch thread: the host cannot bound module calls without it");
        Self { activity }
    }

    pub(super) fn activity(&self) -> &Arc<GuestActivity> {
        &self.activity
    }
}

impl Drop for Ticker {
    fn drop(&mut self) {
        self.activity.stop.store(true, Ordering::SeqCst);
        let _held = self.activity.lock.lock().expect("the ticker lock guards no data");
        self.activity.wake.notify_one();
    }
}
