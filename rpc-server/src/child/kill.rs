//! Killing a process, or its process group, by pid: used by the processes in hand
//! ([`super::process`]) and by the guardian ([`super::guardian`]), which knows nothing else of them.

/// Sends SIGKILL to process `pid`, if it is still there.
pub(crate) fn kill_process(pid: u32) {
    let Ok(pid) = i32::try_from(pid) else { return };
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    );
}

/// Kills process group `pid` (the command and whatever it started), if it is still there.
pub(crate) fn kill_group(pid: u32) {
    let Ok(pid) = i32::try_from(pid) else { return };
    let _ = nix::sys::signal::killpg(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    );
}
