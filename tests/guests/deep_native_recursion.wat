;; Recurses without bound using only wasm locals: every frame lives on the engine's (the host
;; thread's) call stack, none in linear memory, so the task can only end when it has used the
;; whole `--max-wasm-stack` — the case that needs a host thread larger than the cap.
(module
  (memory (export "memory") 1)
  (func $descend (param $depth i64) (result i64)
    (local $a i64) (local $b i64) (local $c i64) (local $d i64)
    (local.set $a (i64.mul (local.get $depth) (i64.const 3)))
    (local.set $b (i64.xor (local.get $depth) (i64.const 5)))
    (local.set $c (i64.rotl (local.get $depth) (i64.const 7)))
    (local.set $d (i64.sub (local.get $depth) (i64.const 11)))
    ;; Live across the call, so they are kept in the frame.
    (i64.add
      (call $descend (i64.add (local.get $depth) (i64.const 1)))
      (i64.xor (i64.xor (local.get $a) (local.get $b)) (i64.xor (local.get $c) (local.get $d)))))
  (func (export "_start")
    (drop (call $descend (i64.const 0)))))
