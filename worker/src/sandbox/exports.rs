//! A guest's entry point and memory, found once per compiled module.
//!
//! Looking an export up by name hashes the name and searches the module's string pool and
//! export map; a task did that for `_start`, and every host call did it again for `memory`
//! (a trivial task makes several). A [`ModuleExport`] is the same lookup done at load time:
//! on each task it is an index into the instance.

use wasmtime::{Extern, ExternType, Instance, Module, ModuleExport, Store, TypedFunc};

use super::SandboxState;

/// `_start` and (when there is one) `memory` of one compiled module.
#[derive(Clone)]
pub struct GuestExports {
    start: ModuleExport,
    memory: Option<ModuleExport>,
}

impl GuestExports {
    /// Finds `module`'s exports. Fails when it is not a WASI command: no `_start`, or a
    /// `_start` that takes or returns something.
    pub fn of(module: &Module) -> wasmtime::Result<Self> {
        let start = match module.get_export("_start") {
            Some(ExternType::Func(ty)) if ty.params().len() == 0 && ty.results().len() == 0 => {
                module.get_export_index("_start")
            }
            Some(ExternType::Func(ty)) => wasmtime::bail!(
                "not a WASI command: `_start` must take and return nothing, it is {ty}"
            ),
            _ => None,
        };
        let Some(start) = start else {
            wasmtime::bail!("not a WASI command: the module has no `_start` function export");
        };
        let memory = match module.get_export("memory") {
            Some(ExternType::Memory(_)) => module.get_export_index("memory"),
            _ => None,
        };
        if memory.is_none() && module.resources_required().num_memories > 0 {
            wasmtime::bail!(
                "not a WASI command: the module defines a linear memory but does not export it \
                 as `memory` (the sandbox needs it to reset the memory safely between tasks)"
            );
        }
        Ok(GuestExports { start, memory })
    }

    /// Binds the store to `instance`'s memory (for host calls) and returns its `_start`.
    /// `instance` must be of the module these exports were found in.
    pub(super) fn bind(
        &self,
        store: &mut Store<SandboxState>,
        instance: Instance,
    ) -> wasmtime::Result<TypedFunc<(), ()>> {
        if let Some(memory) = &self.memory {
            store.data_mut().memory = instance
                .get_module_export(&mut *store, memory)
                .and_then(Extern::into_memory);
        }
        let start = instance
            .get_module_export(&mut *store, &self.start)
            .and_then(Extern::into_func)
            .ok_or_else(|| {
                wasmtime::format_err!("instance is not of the module `_start` was found in")
            })?;
        start.typed::<(), ()>(&*store)
    }
}

#[cfg(test)]
mod tests {
    use wasmtime::Engine;

    use super::*;

    fn exports_of(wat: &str) -> wasmtime::Result<GuestExports> {
        GuestExports::of(&Module::new(&Engine::default(), wat)?)
    }

    #[test]
    fn a_command_has_a_start_and_maybe_a_memory() {
        let with_memory =
            exports_of(r#"(module (memory (export "memory") 1) (func (export "_start")))"#);
        assert!(with_memory.unwrap().memory.is_some());
        let without = exports_of(r#"(module (func (export "_start")))"#);
        assert!(without.unwrap().memory.is_none());
    }

    #[test]
    fn a_memory_it_does_not_export_is_refused() {
        let hidden = refusal(r#"(module (memory 1) (func (export "_start")))"#);
        assert!(hidden.contains("does not export it"), "{hidden}");
        let renamed = refusal(r#"(module (memory (export "mem") 1) (func (export "_start")))"#);
        assert!(renamed.contains("as `memory`"), "{renamed}");
    }

    fn refusal(wat: &str) -> String {
        match exports_of(wat) {
            Ok(_) => panic!("{wat} was taken for a WASI command"),
            Err(error) => error.to_string(),
        }
    }

    #[test]
    fn a_module_without_a_proper_start_is_refused_naming_it() {
        let reactor = refusal(r#"(module (func (export "_initialize")))"#);
        assert!(reactor.contains("no `_start`"), "{reactor}");
        let typed = refusal(r#"(module (func (export "_start") (param i32)))"#);
        assert!(typed.contains("take and return nothing"), "{typed}");
        let global = refusal(r#"(module (global (export "_start") i32 (i32.const 0)))"#);
        assert!(global.contains("no `_start`"), "{global}");
    }
}
