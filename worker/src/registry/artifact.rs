//! The two kinds of guest a modules directory holds — core modules and components — told apart
//! by their binary header, and compiled, cached and loaded the same way.

use std::fs::File;
use std::os::fd::AsRawFd;

use wasmtime::component::Component;
use wasmtime::{Engine, Module};

/// Which kind of guest a `.wasm` file is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuestKind {
    /// A core WebAssembly module (a WASI preview 1 command).
    Module,
    /// A component (a WASI 0.2 `wasi:cli/command`).
    Component,
}

impl GuestKind {
    /// The kind `bytes` are: a component's header has version 0x0d and layer 1 after the
    /// `\0asm` magic; anything else is compiled as a core module (whose errors then explain).
    pub fn of(bytes: &[u8]) -> GuestKind {
        const COMPONENT_HEADER: [u8; 8] = *b"\0asm\x0d\x00\x01\x00";
        if bytes.starts_with(&COMPONENT_HEADER) {
            GuestKind::Component
        } else {
            GuestKind::Module
        }
    }

    /// For logs and errors.
    pub fn label(self) -> &'static str {
        match self {
            GuestKind::Module => "module",
            GuestKind::Component => "component",
        }
    }
}

/// Something compiled ahead of time for an engine: a [`Module`] or a [`Component`].
pub trait Compiled: Sized {
    /// `bytes` compiled to native code for `engine`, to store in the AOT cache.
    fn precompile(engine: &Engine, bytes: &[u8]) -> wasmtime::Result<Vec<u8>>;

    /// Loads precompiled code from `file`, mapped (so memory images are copy-on-write
    /// mappings of the file).
    ///
    /// # Safety
    /// `file` must hold `precompile` output of a trusted wasmtime for this engine's
    /// configuration, and must not change while the result lives.
    unsafe fn load_file(engine: &Engine, file: &File) -> wasmtime::Result<Self>;

    /// Loads precompiled code from memory.
    ///
    /// # Safety
    /// As [`Compiled::load_file`], for `bytes`.
    unsafe fn load_bytes(engine: &Engine, bytes: &[u8]) -> wasmtime::Result<Self>;
}

impl Compiled for Module {
    fn precompile(engine: &Engine, bytes: &[u8]) -> wasmtime::Result<Vec<u8>> {
        engine.precompile_module(bytes)
    }

    unsafe fn load_file(engine: &Engine, file: &File) -> wasmtime::Result<Self> {
        // SAFETY: forwarded from the caller.
        unsafe { Module::deserialize_open_file(engine, file.try_clone()?) }
    }

    unsafe fn load_bytes(engine: &Engine, bytes: &[u8]) -> wasmtime::Result<Self> {
        // SAFETY: forwarded from the caller.
        unsafe { Module::deserialize(engine, bytes) }
    }
}

impl Compiled for Component {
    fn precompile(engine: &Engine, bytes: &[u8]) -> wasmtime::Result<Vec<u8>> {
        engine.precompile_component(bytes)
    }

    unsafe fn load_file(engine: &Engine, file: &File) -> wasmtime::Result<Self> {
        // wasmtime 48 loads components by path only. The descriptor's own path names the
        // file that was opened and checked, whatever happens to its name meanwhile.
        let path = format!("/proc/self/fd/{}", file.as_raw_fd());
        // SAFETY: forwarded from the caller; `path` is `file`.
        unsafe { Component::deserialize_file(engine, path) }
    }

    unsafe fn load_bytes(engine: &Engine, bytes: &[u8]) -> wasmtime::Result<Self> {
        // SAFETY: forwarded from the caller.
        unsafe { Component::deserialize(engine, bytes) }
    }
}

/// The flag that raises the pool limit a component load error reports, if it reports one.
pub fn pool_limit_flag(error: &str) -> Option<&'static str> {
    if !error.contains("configured maximum") {
        return None;
    }
    [
        (
            "core module instances",
            "--max-core-instances-per-component",
        ),
        ("linear memories", "--max-memories-per-component"),
        ("tables", "--max-tables-per-component"),
        ("VMComponentContext", "--max-component-instance-size"),
    ]
    .into_iter()
    .find(|(what, _)| error.contains(what))
    .map(|(_, flag)| flag)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_header_tells_components_from_modules() {
        let engine = Engine::default();
        let module = Module::new(&engine, "(module)")
            .unwrap()
            .serialize()
            .unwrap();
        let empty_module = b"\0asm\x01\0\0\0";
        let empty_component = b"\0asm\x0d\0\x01\0";
        assert_eq!(GuestKind::of(empty_module), GuestKind::Module);
        assert_eq!(GuestKind::of(empty_component), GuestKind::Component);
        // Precompiled code is neither; it is refused as a module, never run as a component.
        assert_eq!(GuestKind::of(&module), GuestKind::Module);
        assert_eq!(GuestKind::of(b"not wasm"), GuestKind::Module);
    }
}
