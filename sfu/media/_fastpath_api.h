/* What sfu.media._fastpath offers other compiled modules (the receive path, sfu/media/_fastrecv.c)
 * through its `_C_API` capsule: `forward` without the Python call. */
#ifndef SFU_MEDIA_FASTPATH_API_H
#define SFU_MEDIA_FASTPATH_API_H

#include <Python.h>
#include <stdint.h>

#define FASTPATH_CAPSULE "sfu.media._fastpath._C_API"

typedef struct {
    /* forward(targets, packet, data, ext_seq, payload_offset, padding_size, now): `targets` a
     * list or tuple, `data` exact bytes; the copies written and their plaintext bytes go to the
     * last two; 0, or -1 with an exception set */
    int (*forward)(PyObject *targets, PyObject *packet, PyObject *data, int64_t ext_seq,
                   Py_ssize_t payload_offset, Py_ssize_t padding, double now, Py_ssize_t *copies,
                   Py_ssize_t *octets);
    PyTypeObject *target_type; /* sfu.media._fastpath.Target */
} FastpathApi;

#endif
