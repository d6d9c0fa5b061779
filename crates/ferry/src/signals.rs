//! SIGTERM/SIGINT for the synchronous commands: the first signal sets a flag that the work
//! loop checks between transactions (finish what is in hand, flush, exit 0); a second one
//! exits at once with the conventional status.

use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

static STOP: OnceLock<Arc<AtomicBool>> = OnceLock::new();
static SIGNALS: AtomicUsize = AtomicUsize::new(0);

extern "C" fn on_signal(sig: libc::c_int) {
    if SIGNALS.fetch_add(1, Ordering::SeqCst) >= 1 {
        // SAFETY: _exit is async-signal-safe.
        unsafe { libc::_exit(128 + sig) };
    }
    if let Some(flag) = STOP.get() {
        flag.store(true, Ordering::SeqCst);
    }
}

/// Installs the handlers (once) and returns the flag they set.
pub fn stop_flag() -> Arc<AtomicBool> {
    let flag = STOP
        .get_or_init(|| Arc::new(AtomicBool::new(false)))
        .clone();
    // SAFETY: installing a handler that only touches atomics and calls _exit.
    unsafe {
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
    }
    flag
}

/// For the async commands: resolves on the first SIGTERM or SIGINT.
pub async fn wait_for_shutdown() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        // Without signal handlers, never resolve: the process is stopped by other means.
        std::future::pending::<()>().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

static SWITCH: OnceLock<Arc<AtomicBool>> = OnceLock::new();

extern "C" fn on_switch(_sig: libc::c_int) {
    if let Some(flag) = SWITCH.get() {
        flag.store(true, Ordering::SeqCst);
    }
}

/// SIGUSR1 for the sample application: the flag it sets asks it to move to PostgreSQL.
pub fn switch_flag() -> Arc<AtomicBool> {
    let flag = SWITCH
        .get_or_init(|| Arc::new(AtomicBool::new(false)))
        .clone();
    // SAFETY: installing a handler that only touches an atomic.
    unsafe {
        libc::signal(libc::SIGUSR1, on_switch as *const () as libc::sighandler_t);
    }
    flag
}
