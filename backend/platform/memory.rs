//! System memory, for the device's memory report.

/// (free, total) bytes of system memory, where the system reports them: free counts the
/// buffers Linux would reclaim.
pub fn system_memory() -> Option<(usize, usize)> {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: sysinfo is plain data; the call fills the struct it is given.
        let mut info: libc::sysinfo = unsafe { std::mem::zeroed() };
        if unsafe { libc::sysinfo(&mut info) } == 0 {
            let unit = info.mem_unit as usize;
            return Some(((info.freeram as usize + info.bufferram as usize) * unit, info.totalram as usize * unit));
        }
    }
    #[cfg(target_vendor = "apple")]
    {
        let mut total: u64 = 0;
        let mut len = std::mem::size_of::<u64>();
        // SAFETY: the name is NUL-terminated; `total` and `len` describe a writable u64.
        let rc = unsafe { libc::sysctlbyname(c"hw.memsize".as_ptr(), (&raw mut total).cast(), &mut len, std::ptr::null_mut(), 0) };
        // No cheap "free" figure on macOS: report the total, as ggml's CPU device does.
        if rc == 0 {
            return Some((total as usize, total as usize));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    #[test]
    #[cfg(any(target_os = "linux", target_vendor = "apple"))]
    fn memory_is_reported() {
        let (free, total) = super::system_memory().expect("the system reports its memory");
        assert!(total > 0 && free <= total, "{free} of {total}");
    }
}
