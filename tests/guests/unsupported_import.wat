;; A command that imports a host function warren does not provide: must fail to load, naming it.
(module
  (import "env" "launch_missiles" (func $launch))
  (memory (export "memory") 1)
  (func (export "_start") (call $launch)))
