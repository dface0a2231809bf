;; A component that exports nothing: not a `wasi:cli/command`, so it must fail to load.
(component)
