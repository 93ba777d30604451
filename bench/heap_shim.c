/* A counting malloc for measuring PyTorch's heap peak during one training step
 * (bench/compare_pytorch.py --only memory), the same definition as `octconv bench`'s counting
 * allocator: live heap bytes (malloc_usable_size) and their high-water mark since the last reset.
 * Build: cc -O2 -shared -fPIC -o heap_shim.so heap_shim.c; load with LD_PRELOAD and call
 * heap_shim_reset_peak() / heap_shim_peak() / heap_shim_current() through ctypes.
 * glibc's __libc_* entry points are used, so no dlsym bootstrapping is needed. */
#include <malloc.h>
#include <stdatomic.h>
#include <stddef.h>

extern void *__libc_malloc(size_t);
extern void *__libc_calloc(size_t, size_t);
extern void *__libc_realloc(void *, size_t);
extern void *__libc_memalign(size_t, size_t);
extern void __libc_free(void *);

static atomic_long current_bytes, peak_bytes;

static void grow(long n) {
  long c = atomic_fetch_add(&current_bytes, n) + n;
  long p = atomic_load(&peak_bytes);
  while (c > p && !atomic_compare_exchange_weak(&peak_bytes, &p, c)) {
  }
}

static void *counted(void *p) {
  if (p) grow((long)malloc_usable_size(p));
  return p;
}

void *malloc(size_t n) { return counted(__libc_malloc(n)); }
void *calloc(size_t a, size_t b) { return counted(__libc_calloc(a, b)); }
void *memalign(size_t a, size_t n) { return counted(__libc_memalign(a, n)); }
void *aligned_alloc(size_t a, size_t n) { return counted(__libc_memalign(a, n)); }
void *valloc(size_t n) { return counted(__libc_memalign(4096, n)); }

int posix_memalign(void **out, size_t a, size_t n) {
  void *p = counted(__libc_memalign(a, n));
  if (!p) return 12; /* ENOMEM */
  *out = p;
  return 0;
}

void free(void *p) {
  if (!p) return;
  grow(-(long)malloc_usable_size(p));
  __libc_free(p);
}

void *realloc(void *p, size_t n) {
  long old = p ? (long)malloc_usable_size(p) : 0;
  void *q = __libc_realloc(p, n);
  if (q) {
    grow((long)malloc_usable_size(q) - old);
  } else if (p && n == 0) {
    grow(-old);
  }
  return q;
}

long heap_shim_current(void) { return atomic_load(&current_bytes); }
long heap_shim_peak(void) { return atomic_load(&peak_bytes); }
void heap_shim_reset_peak(void) { atomic_store(&peak_bytes, atomic_load(&current_bytes)); }
