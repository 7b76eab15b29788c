/*
 * kvmrx-malloc.c: malloc, free, calloc, realloc (and aligned_alloc, posix_memalign) for sandbox
 * guests, over the RAM between the image and the stack (kvmrx_heap_bounds). Power-of-two size
 * classes from 16 bytes, a free list per class, carved from a bump pointer; freed blocks are
 * reused by their class and never returned. When RAM runs out, malloc returns NULL: the memory
 * limit of a guest is its RAM size.
 */
#include "kvmrx.h"

void* memcpy(void* dst, const void* src, size_t n);
void* memset(void* dst, int c, size_t n);
int* __errno_location(void);

#define ENOMEM 12 /* Linux and musl values */
#define EINVAL 22
#define errno (*__errno_location())

#define MIN_SHIFT 4
#define CLASSES 48
#define HDR 16 /* keeps blocks 16-byte aligned; holds the class */

static uintptr_t bump, limit;
static void* free_list[CLASSES];

static int class_of(size_t n) {
  size_t need = n + HDR;
  if (need < n) return -1;
  int c = 0;
  size_t size = (size_t)1 << MIN_SHIFT;
  while (size < need) {
    size <<= 1;
    if (++c >= CLASSES) return -1;
  }
  return c;
}

void* malloc(size_t n) {
  int c = class_of(n);
  if (c < 0) {
    errno = ENOMEM;
    return NULL;
  }
  uint8_t* block;
  if (free_list[c] != NULL) {
    block = free_list[c];
    free_list[c] = *(void**)(block + HDR);
  } else {
    if (bump == 0) kvmrx_heap_bounds(&bump, &limit);
    size_t size = (size_t)1 << (c + MIN_SHIFT);
    if (size > limit - bump) {
      errno = ENOMEM;
      return NULL;
    }
    block = (uint8_t*)bump;
    bump += size;
  }
  *(uint64_t*)block = (uint64_t)c;
  return block + HDR;
}

void free(void* p) {
  if (p == NULL) return;
  uint8_t* block = (uint8_t*)p - HDR;
  uint64_t c = *(uint64_t*)block;
  if (c >= CLASSES) kvmrx_abort("free: not a block of malloc (heap corrupted)");
  *(void**)p = free_list[c];
  free_list[c] = block;
}

void* calloc(size_t m, size_t n) {
  if (n != 0 && m > (size_t)-1 / n) {
    errno = ENOMEM;
    return NULL;
  }
  void* p = malloc(m * n);
  if (p != NULL) memset(p, 0, m * n);
  return p;
}

void* realloc(void* p, size_t n) {
  if (p == NULL) return malloc(n);
  if (n == 0) {
    free(p);
    return NULL;
  }
  uint64_t c = *(uint64_t*)((uint8_t*)p - HDR);
  if (c >= CLASSES) kvmrx_abort("realloc: not a block of malloc (heap corrupted)");
  size_t have = ((size_t)1 << (c + MIN_SHIFT)) - HDR;
  if (n <= have) return p;
  void* q = malloc(n);
  if (q == NULL) return NULL;
  memcpy(q, p, have);
  free(p);
  return q;
}

void* aligned_alloc(size_t align, size_t n) {
  if (align <= HDR) return malloc(n);
  errno = EINVAL; /* larger alignments are not offered */
  return NULL;
}

int posix_memalign(void** out, size_t align, size_t n) {
  if (align > HDR) return EINVAL;
  void* p = malloc(n);
  if (p == NULL) return ENOMEM;
  *out = p;
  return 0;
}
