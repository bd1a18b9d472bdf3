// Per-thread scratch buffers (scratch_impl.h).
#include <pthread.h>
#include <stdlib.h>

#include "scratch_impl.h"

typedef struct {
    void *p[CK_SCRATCH_SLOTS];
    size_t bytes[CK_SCRATCH_SLOTS];
} scratch_slots;

static _Thread_local scratch_slots tl_slots;
static pthread_key_t g_key;
static pthread_once_t g_once = PTHREAD_ONCE_INIT;

// Runs at thread exit (before the thread's TLS goes away): frees every slot.
static void release(void *v) {
    scratch_slots *s = (scratch_slots *)v;
    for (int i = 0; i < CK_SCRATCH_SLOTS; i++) {
        free(s->p[i]);
        s->p[i] = NULL;
        s->bytes[i] = 0;
    }
}
static void key_init(void) { pthread_key_create(&g_key, release); }

void *ck_thread_scratch(int slot, size_t bytes) {
    scratch_slots *s = &tl_slots;
    if (bytes <= s->bytes[slot]) return s->p[slot];
    pthread_once(&g_once, key_init);
    free(s->p[slot]);
    const size_t rounded = (bytes + 63) & ~(size_t)63;
    s->p[slot] = aligned_alloc(64, rounded);
    s->bytes[slot] = s->p[slot] ? rounded : 0;
    pthread_setspecific(g_key, s);
    return s->p[slot];
}
