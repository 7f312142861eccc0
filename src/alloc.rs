//! glibc malloc tuning: a controller's heap is many small, long-lived objects written from a
//! few threads, which glibc's defaults (one arena per thread, free pages kept) turn into RSS.

/// Caps malloc arenas so that worker and blocking threads share memory instead of each keeping
/// its own free lists; called once at start-up, before any thread exists. An operator's
/// `MALLOC_ARENA_MAX` wins.
pub fn limit_arenas(arenas: i32) {
    if std::env::var_os("MALLOC_ARENA_MAX").is_some() {
        return;
    }
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets a malloc parameter; it is called before other threads start.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, arenas);
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    let _ = arenas;
}

/// Hands free pages back to the kernel after a burst (a planning round, a wave of binds) so
/// that peak RSS follows the live heap rather than the sum of past peaks.
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free memory held by malloc; it is thread-safe.
    unsafe {
        libc::malloc_trim(0);
    }
}
