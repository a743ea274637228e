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

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;
    use crate::engine::{Engine, Limits};

    /// A core module whose start function loops forever, encoded by hand.
    const LOOPING_START: &[u8] = &[
        0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00, // magic, version
        0x01, 0x04, 0x01, 0x60, 0x00, 0x00, // type 0: [] -> []
        0x03, 0x02, 0x01, 0x00, // function 0 of type 0
        0x08, 0x01, 0x00, // start: function 0
        0x0a, 0x09, 0x01, 0x07, 0x00, 0x03, 0x40, 0x0c, 0x00, 0x0b, 0x0b, // loop { br 0 }
    ];

    /// Parked, the ticker does not advance the epoch; the guard wakes it, so
    /// guest code that never returns still runs into its deadline, again
    /// after the ticker has parked a second time.
    #[test]
    fn a_parked_ticker_wakes_for_guest_code_and_stops_it_at_its_deadline() {
        let engine = Engine::new(Limits::default()).unwrap();
        let module = wasmtime::Module::new(&engine.inner, LOOPING_START).unwrap();
        let activity = engine.ticker.activity().clone();
        for round in 0..2 {
            let deadline = Instant::now() + Duration::from_secs(10);
            while !activity.parked.load(Ordering::SeqCst) {
                assert!(Instant::now() < deadline, "round {round}: the ticker never parked");
                std::thread::yield_now();
            }
            let (done, finished) = std::sync::mpsc::channel();
            let (engine, module, activity) = (engine.inner.clone(), module.clone(), activity.clone());
            std::thread::spawn(move || {
                let mut store = wasmtime::Store::new(&engine, ());
                store.set_epoch_deadline(2);
                let _running = activity.enter();
                let _ = done.send(wasmtime::Instance::new(&mut store, &module, &[]).map(drop));
            });
            let result = finished.recv_timeout(Duration::from_secs(10));
            let err = result.expect("the looping start function was never interrupted").unwrap_err();
            assert_eq!(err.downcast_ref::<wasmtime::Trap>(), Some(&wasmtime::Trap::Interrupt), "round {round}");
        }
    }
}
