/* What sfu.media._fastpath offers other compiled modules (the receive path, sfu/media/_fastrecv.c)
 * through its `_C_API` capsule: `forward_many`, a run of one stream's packets fanned out target
 * by target, and the Target type. */
#ifndef SFU_MEDIA_FASTPATH_API_H
#define SFU_MEDIA_FASTPATH_API_H

#include <Python.h>
#include <stdint.h>

#define FASTPATH_CAPSULE "sfu.media._fastpath._C_API"
#define FASTPATH_MAX_MANY 64 /* packets in one forward_many call */

/* one received packet for forward_many: what forward takes */
typedef struct {
    PyObject *packet; /* what the targets keep as last_packet: the parsed packet, or `data` */
    PyObject *data;   /* exact bytes */
    int64_t ext_seq;
    Py_ssize_t payload_offset, padding;
    double now;
} FastpathPacket;

typedef struct {
    /* forward_many(targets, packets, count, flush_at): `targets` a list or tuple; the Python
     * `forward` of each packet, in order, but target by target (each target gets the whole run
     * before the next one gets any); after a target's run, a batch holding flush_at datagrams or more (0: never) is sent at once, so
     * the first destinations do not wait for the last ones' copies and each destination's run
     * still leaves in one GSO message; the copies written and their plaintext bytes go to the
     * last two; 0, or -1 with an exception set */
    int (*forward_many)(PyObject *targets, const FastpathPacket *packets, Py_ssize_t count,
                        Py_ssize_t flush_at, Py_ssize_t *copies, Py_ssize_t *octets);
    PyTypeObject *target_type; /* sfu.media._fastpath.Target */
} FastpathApi;

#endif
