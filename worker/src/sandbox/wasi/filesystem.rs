//! Files, directories and paths: a sandboxed command has none.
//!
//! With no preopened directory there is no descriptor a path can be resolved against, and the
//! standard streams are not files: every call here is `EBADF`, whatever its arguments — the
//! answer wasmtime-wasi gives a context without preopens. (wasi-libc finds its preopens by
//! asking `fd_prestat_get` for 3, 4, … until `EBADF`; here it stops at once, so a guest's
//! `open("/etc/passwd")` fails with `ENOENT` inside the guest and never reaches the host.)

use wasmtime::Linker;

use super::errno::BADF;
use super::{SandboxState, WASI};

/// Defines every file, directory and path call as `EBADF`.
pub fn add_to_linker(linker: &mut Linker<SandboxState>) -> wasmtime::Result<()> {
    linker.func_wrap(WASI, "fd_advise", |_: u32, _: u64, _: u64, _: u32| BADF)?;
    linker.func_wrap(WASI, "fd_allocate", |_: u32, _: u64, _: u64| BADF)?;
    linker.func_wrap(WASI, "fd_datasync", |_: u32| BADF)?;
    linker.func_wrap(WASI, "fd_sync", |_: u32| BADF)?;
    linker.func_wrap(WASI, "fd_fdstat_set_flags", |_: u32, _: u32| BADF)?;
    linker.func_wrap(WASI, "fd_fdstat_set_rights", |_: u32, _: u64, _: u64| BADF)?;
    linker.func_wrap(WASI, "fd_filestat_set_size", |_: u32, _: u64| BADF)?;
    linker.func_wrap(
        WASI,
        "fd_filestat_set_times",
        |_: u32, _: u64, _: u64, _: u32| BADF,
    )?;
    linker.func_wrap(WASI, "fd_prestat_get", |_: u32, _: u32| BADF)?;
    linker.func_wrap(WASI, "fd_prestat_dir_name", |_: u32, _: u32, _: u32| BADF)?;
    linker.func_wrap(
        WASI,
        "fd_readdir",
        |_: u32, _: u32, _: u32, _: u64, _: u32| BADF,
    )?;
    linker.func_wrap(WASI, "path_create_directory", |_: u32, _: u32, _: u32| BADF)?;
    linker.func_wrap(
        WASI,
        "path_filestat_get",
        |_: u32, _: u32, _: u32, _: u32, _: u32| BADF,
    )?;
    linker.func_wrap(
        WASI,
        "path_filestat_set_times",
        |_: u32, _: u32, _: u32, _: u32, _: u64, _: u64, _: u32| BADF,
    )?;
    linker.func_wrap(
        WASI,
        "path_link",
        |_: u32, _: u32, _: u32, _: u32, _: u32, _: u32, _: u32| BADF,
    )?;
    linker.func_wrap(
        WASI,
        "path_open",
        |_: u32, _: u32, _: u32, _: u32, _: u32, _: u64, _: u64, _: u32, _: u32| BADF,
    )?;
    linker.func_wrap(
        WASI,
        "path_readlink",
        |_: u32, _: u32, _: u32, _: u32, _: u32, _: u32| BADF,
    )?;
    linker.func_wrap(WASI, "path_remove_directory", |_: u32, _: u32, _: u32| BADF)?;
    linker.func_wrap(
        WASI,
        "path_rename",
        |_: u32, _: u32, _: u32, _: u32, _: u32, _: u32| BADF,
    )?;
    linker.func_wrap(
        WASI,
        "path_symlink",
        |_: u32, _: u32, _: u32, _: u32, _: u32| BADF,
    )?;
    linker.func_wrap(WASI, "path_unlink_file", |_: u32, _: u32, _: u32| BADF)?;
    Ok(())
}
