;; Writes a secret where the next task in the same slot could find it, or looks for one.
;;
;; stdin = one region letter, then (to write) the secret:
;;   i  a page of the module's data image        (linear memory offset 1024)
;;   h  a heap page beyond the image             (offset 73728, second wasm page)
;;   g  a page after `memory.grow` by one page   (offset 135168, third wasm page)
;;   t  element 700 of a 1024-element funcref table
;;   v  a mutable global (its 4 bytes)
;; A lower-case letter followed by a secret writes the secret (up to 64 bytes; the table gets a
;; non-null funcref) and returns at once; an upper-case letter does the same and then sleeps 1.5 s
;; in poll_oneoff, so the host can page the worker out while the written page is idle.
;; A letter alone reads: 64 bytes of that region to stdout (after growing memory by one page for
;; `g`), `null` / `SET!` for the table element, the global's 4 bytes. A fresh sandbox reads
;; zeros (none of the regions holds image data) and `null`.
(module
  (import "wasi_snapshot_preview1" "fd_read"
    (func $fd_read (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write"
    (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "poll_oneoff"
    (func $poll_oneoff (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 2 4)
  (table $t 1024 funcref)
  (global $v (mut i32) (i32.const 0))
  (elem declare func $marker)
  ;; The data image: the first host page of memory.
  (data (i32.const 0) "isolation probe: data image page")

  ;; Scratch, in the first wasm page but outside the image page:
  ;; 32768 iovec {ptr, len}, 32776 byte count, 32800 stdin buffer (128 bytes),
  ;; 33024 poll subscription (48 bytes), 33088 poll event (32 bytes), 33120 event count,
  ;; 33200 "null", 33204 "SET!", 33216 the global's bytes.
  (data (i32.const 33200) "nullSET!")

  (func $marker)

  (func $write_out (param $ptr i32) (param $len i32)
    (i32.store (i32.const 32768) (local.get $ptr))
    (i32.store (i32.const 32772) (local.get $len))
    (drop (call $fd_write (i32.const 1) (i32.const 32768) (i32.const 1) (i32.const 32776))))

  (func $region (param $letter i32) (result i32)
    (if (i32.eq (local.get $letter) (i32.const 105)) (then (return (i32.const 1024))))   ;; i
    (if (i32.eq (local.get $letter) (i32.const 104)) (then (return (i32.const 73728))))  ;; h
    (i32.const 135168))                                                                  ;; g

  (func $sleep
    ;; A relative timeout of 1.5 s on the monotonic clock.
    (i64.store (i32.const 33024) (i64.const 0))          ;; userdata
    (i32.store8 (i32.const 33032) (i32.const 0))         ;; tag: clock
    (i32.store (i32.const 33040) (i32.const 1))          ;; clock id: monotonic
    (i64.store (i32.const 33048) (i64.const 1500000000)) ;; timeout, ns
    (i64.store (i32.const 33056) (i64.const 0))          ;; precision
    (i32.store16 (i32.const 33064) (i32.const 0))        ;; flags: relative
    (drop (call $poll_oneoff (i32.const 33024) (i32.const 33088) (i32.const 1) (i32.const 33120))))

  (func (export "_start")
    (local $len i32) (local $letter i32) (local $lower i32) (local $at i32)
    (i32.store (i32.const 32768) (i32.const 32800))
    (i32.store (i32.const 32772) (i32.const 65))
    (drop (call $fd_read (i32.const 0) (i32.const 32768) (i32.const 1) (i32.const 32776)))
    (local.set $len (i32.load (i32.const 32776)))
    (if (i32.eqz (local.get $len)) (then (return)))
    (local.set $letter (i32.load8_u (i32.const 32800)))
    (local.set $lower (i32.or (local.get $letter) (i32.const 32)))

    ;; Read.
    (if (i32.eq (local.get $len) (i32.const 1))
      (then
        (if (i32.eq (local.get $lower) (i32.const 116)) ;; t
          (then
            (if (ref.is_null (table.get $t (i32.const 700)))
              (then (call $write_out (i32.const 33200) (i32.const 4)))
              (else (call $write_out (i32.const 33204) (i32.const 4))))
            (return)))
        (if (i32.eq (local.get $lower) (i32.const 118)) ;; v
          (then
            (i32.store (i32.const 33216) (global.get $v))
            (call $write_out (i32.const 33216) (i32.const 4))
            (return)))
        (if (i32.eq (local.get $lower) (i32.const 103)) ;; g
          (then (drop (memory.grow (i32.const 1)))))
        (call $write_out (call $region (local.get $lower)) (i32.const 64))
        (return)))

    ;; Write.
    (if (i32.eq (local.get $lower) (i32.const 116))
      (then (table.set $t (i32.const 700) (ref.func $marker))))
    (if (i32.eq (local.get $lower) (i32.const 118))
      (then (global.set $v (i32.load (i32.const 32801)))))
    (if (i32.and (i32.ne (local.get $lower) (i32.const 116)) (i32.ne (local.get $lower) (i32.const 118)))
      (then
        (if (i32.eq (local.get $lower) (i32.const 103))
          (then (drop (memory.grow (i32.const 1)))))
        (local.set $at (call $region (local.get $lower)))
        (memory.copy (local.get $at) (i32.const 32801) (i32.sub (local.get $len) (i32.const 1)))))
    ;; Upper case: stay idle with the secret written, so it can be paged out.
    (if (i32.ne (local.get $letter) (local.get $lower))
      (then (call $sleep))))
)
