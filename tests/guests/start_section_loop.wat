;; Loops forever in its start section, i.e. during instantiation, before `_start` is reached.
(module
  (memory (export "memory") 1)
  (func $spin (loop $l (br $l)))
  (start $spin)
  (func (export "_start")))
