;; A component that imports `wasi:http/outgoing-handler`, which warren does not provide: must fail
;; to load, naming the import.
(component
  (import "wasi:http/outgoing-handler@0.2.0" (instance $http
    (export "handle" (func))))
)
