//! The only place forgetd handles Unix signals: SIGTERM and SIGINT become [`Control::Stop`],
//! SIGHUP becomes [`Control::Reload`], on the channel [`Daemon::run_until`](super::Daemon::run_until)
//! reads. Tests drive the daemon with their own channel instead.

use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;

/// What the daemon is told from outside.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    /// Stop claiming, let in-flight batches finish, exit (the text says why, for the log).
    Stop(&'static str),
    /// Re-read the config file.
    Reload,
}

/// Installs the handlers now (before READY=1: a SIGHUP that arrived before its handler would
/// kill the process, the default action) and forwards signals as [`Control`].
pub fn install() -> std::io::Result<mpsc::Receiver<Control>> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    // Sender: this task; receiver: the daemon's main loop.
    let (tx, rx) = mpsc::channel(8);
    tokio::spawn(async move {
        loop {
            let c = tokio::select! {
                _ = term.recv() => Control::Stop("SIGTERM"),
                _ = int.recv() => Control::Stop("SIGINT"),
                _ = hup.recv() => Control::Reload,
            };
            if tx.send(c).await.is_err() {
                break;
            }
        }
    });
    Ok(rx)
}
