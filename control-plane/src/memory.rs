//! Giving memory back to the operating system after large transient work.
//!
//! Start-up and a configuration reload parse the file and compile its static
//! routes more than once (parse, validate, publish, the in-process gateway's
//! copy): with a million routes the peak is gigabytes, all of it freed a
//! moment later. glibc's allocator keeps freed memory in its arenas, so the
//! process's RSS would stay at that peak for good. `malloc_trim` returns the
//! free pages; it runs only after such work, never per request.

/// Returns the allocator's free memory to the operating system (glibc on
/// Linux; elsewhere nothing to do).
#[allow(unsafe_code)]
pub fn release_freed() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim takes no pointers; it only walks glibc's own free
    // lists under its locks, and may be called from any thread.
    unsafe {
        libc::malloc_trim(0);
    }
}
