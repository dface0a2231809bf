;; Exercises warren's own stdio calls where they meet wasmtime-wasi's descriptor table:
;; 1. reads all of stdin with one fd_read over two iovecs (3 bytes, then 100), and writes it
;;    back to stdout with one fd_write over two ciovecs;
;; 2. fd_renumber(2, 1): stderr now answers at 1 (stdout is gone), so "to-stderr" written to 1
;;    lands in stderr;
;; 3. a write to 2 (now nothing) and, after fd_close(0), a read of 0 must both fail with EBADF.
;; Exits with errno(3a) + 16 * errno(3b): 8 + 128 = 136 when both are EBADF.
(module
  (import "wasi_snapshot_preview1" "fd_read" (func $read (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write" (func $write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_renumber" (func $renumber (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_close" (func $close (param i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
  (memory (export "memory") 1)
  (data (i32.const 300) "to-stderr")
  (func (export "_start")
    (local $n i32) (local $bad_write i32) (local $bad_read i32)
    ;; iovecs at 0: (100, 3), (200, 100)
    (i32.store (i32.const 0) (i32.const 100))
    (i32.store (i32.const 4) (i32.const 3))
    (i32.store (i32.const 8) (i32.const 200))
    (i32.store (i32.const 12) (i32.const 100))
    (if (call $read (i32.const 0) (i32.const 0) (i32.const 2) (i32.const 16))
      (then (call $exit (i32.const 1))))
    (local.set $n (i32.load (i32.const 16)))
    ;; ciovecs: (100, 3), (200, n - 3)
    (i32.store (i32.const 12) (i32.sub (local.get $n) (i32.const 3)))
    (if (call $write (i32.const 1) (i32.const 0) (i32.const 2) (i32.const 20))
      (then (call $exit (i32.const 2))))
    (if (i32.ne (i32.load (i32.const 20)) (local.get $n))
      (then (call $exit (i32.const 3))))
    (if (call $renumber (i32.const 2) (i32.const 1))
      (then (call $exit (i32.const 4))))
    ;; ciovec at 32: (300, 9)
    (i32.store (i32.const 32) (i32.const 300))
    (i32.store (i32.const 36) (i32.const 9))
    (if (call $write (i32.const 1) (i32.const 32) (i32.const 1) (i32.const 20))
      (then (call $exit (i32.const 5))))
    (local.set $bad_write (call $write (i32.const 2) (i32.const 32) (i32.const 1) (i32.const 20)))
    (if (call $close (i32.const 0))
      (then (call $exit (i32.const 6))))
    (local.set $bad_read (call $read (i32.const 0) (i32.const 0) (i32.const 1) (i32.const 16)))
    (call $exit
      (i32.add (local.get $bad_write) (i32.mul (local.get $bad_read) (i32.const 16))))))
