/* loadtest._rx: batched receive and clear-header counting for the load tester's subscribers.
 *
 * One `Table` per subscriber socket. `drain(fd)` reads every datagram queued on the socket with
 * recvmmsg (up to RX_BATCH per syscall, into buffers shared by the process: the GIL is held
 * throughout), counts each SRTP packet from its clear RTP header (RFC 3550 §5.1, RFC 3711 §3.1)
 * in a bounded per-SSRC table, and returns only what Python must see: the sampled RTP packets
 * (every `sample_every`-th of a stream, the first one included) and every datagram that is not
 * RTP (STUN, DTLS, SRTCP: RFC 7983 first-byte demux, RFC 5761 RTP/RTCP split). `feed` runs the
 * same counting over datagrams given as bytes; loadtest/rx.py holds the pure-Python twin.
 *
 * Hostile input: at most `capacity` SSRCs get a stream; packets of others are counted in
 * `overflow` only. Datagrams larger than RX_BUFFER are dropped and counted in `truncated`.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>

#define RX_BATCH 64
#define RX_BUFFER 4096
#define MAX_CAPACITY 65536

typedef struct {
    uint32_t ssrc;
    uint32_t since_sample;
    int64_t base;
    int64_t highest;
    uint64_t received;
    uint64_t octets;
    uint64_t pending;
} stream_t;

typedef struct {
    PyObject_HEAD
    stream_t *streams;    /* dense, in order of first packet */
    int32_t *index;       /* open addressing over `streams`: -1 = empty */
    Py_ssize_t count;
    Py_ssize_t capacity;  /* most streams */
    Py_ssize_t slots;     /* size of `index`, a power of two, > 2 * count */
    uint32_t sample_every;
    unsigned long long packets;
    unsigned long long octets;
    unsigned long long overflow;
    unsigned long long truncated;
} Table;

static struct mmsghdr rx_msgs[RX_BATCH];
static struct iovec rx_iov[RX_BATCH];
static struct sockaddr_storage rx_addr[RX_BATCH];
static unsigned char rx_buf[RX_BATCH][RX_BUFFER + 1];

static inline uint32_t slot_of(uint32_t ssrc, Py_ssize_t slots) {
    return (uint32_t)((ssrc * 2654435761u) & (uint32_t)(slots - 1));
}

static int grow(Table *t) {
    Py_ssize_t slots = t->slots * 2;
    int32_t *index = PyMem_Malloc(sizeof(int32_t) * slots);
    stream_t *streams = PyMem_Realloc(t->streams, sizeof(stream_t) * (slots / 2));
    if (index == NULL || streams == NULL) {
        PyMem_Free(index);
        if (streams != NULL) t->streams = streams;
        PyErr_NoMemory();
        return -1;
    }
    t->streams = streams;
    for (Py_ssize_t i = 0; i < slots; i++) index[i] = -1;
    for (Py_ssize_t i = 0; i < t->count; i++) {
        uint32_t s = slot_of(streams[i].ssrc, slots);
        while (index[s] >= 0) s = (s + 1) & (uint32_t)(slots - 1);
        index[s] = (int32_t)i;
    }
    PyMem_Free(t->index);
    t->index = index;
    t->slots = slots;
    return 0;
}

/* The stream of `ssrc`, created if there is room; NULL (no error set) when the table is full,
 * NULL with an error set on memory failure. `*created` says whether it is new. */
static stream_t *lookup(Table *t, uint32_t ssrc, int64_t seq, int *created) {
    uint32_t s = slot_of(ssrc, t->slots);
    *created = 0;
    while (t->index[s] >= 0) {
        stream_t *st = &t->streams[t->index[s]];
        if (st->ssrc == ssrc) return st;
        s = (s + 1) & (uint32_t)(t->slots - 1);
    }
    if (t->count >= t->capacity) return NULL;
    if ((t->count + 1) * 2 > t->slots) {
        if (grow(t) < 0) return NULL;
        s = slot_of(ssrc, t->slots);
        while (t->index[s] >= 0) s = (s + 1) & (uint32_t)(t->slots - 1);
    }
    stream_t *st = &t->streams[t->count];
    t->index[s] = (int32_t)t->count;
    t->count++;
    memset(st, 0, sizeof(*st));
    st->ssrc = ssrc;
    st->base = st->highest = seq;
    st->since_sample = t->sample_every;
    *created = 1;
    return st;
}

static inline int is_rtp(const unsigned char *d, Py_ssize_t n) {
    return n >= 12 && d[0] > 127 && d[0] < 192 && !(d[1] > 191 && d[1] < 224);
}

/* Count one RTP packet. Returns 1 when it is a sample (its ssrc and the stream's pending octets
 * before it in *ssrc_out / *pending_out), 0 otherwise, 2 when its SSRC found no room, -1 with an
 * error set. */
static int count(Table *t, const unsigned char *d, Py_ssize_t n, int clear, uint32_t *ssrc_out,
                 unsigned long long *pending_out) {
    uint32_t ssrc = ((uint32_t)d[8] << 24) | ((uint32_t)d[9] << 16) | ((uint32_t)d[10] << 8) | d[11];
    int64_t seq = ((int64_t)d[2] << 8) | d[3];
    int created;
    t->packets++;
    t->octets += (unsigned long long)n;
    stream_t *st = lookup(t, ssrc, seq, &created);
    if (st == NULL) {
        if (PyErr_Occurred()) return -1;
        t->overflow++;
        return 2;
    }
    if (created) {
        st->received = 1;
    } else {
        st->received++;
        uint32_t delta = (uint32_t)((seq - st->highest) & 0xFFFF);
        if (delta < 0x8000) st->highest += delta;
    }
    st->octets += (unsigned long long)n;
    if (clear) return 0;
    st->since_sample++;
    if (st->since_sample >= t->sample_every) {
        st->since_sample = 0;
        *ssrc_out = ssrc;
        *pending_out = st->pending;
        st->pending = (unsigned long long)n;
        return 1;
    }
    st->pending += (unsigned long long)n;
    return 0;
}

static PyObject *address(const struct sockaddr_storage *a) {
    char host[INET6_ADDRSTRLEN];
    if (a->ss_family == AF_INET) {
        const struct sockaddr_in *v4 = (const struct sockaddr_in *)a;
        inet_ntop(AF_INET, &v4->sin_addr, host, sizeof(host));
        return Py_BuildValue("(si)", host, ntohs(v4->sin_port));
    }
    if (a->ss_family == AF_INET6) {
        const struct sockaddr_in6 *v6 = (const struct sockaddr_in6 *)a;
        inet_ntop(AF_INET6, &v6->sin6_addr, host, sizeof(host));
        return Py_BuildValue("(siII)", host, ntohs(v6->sin6_port), ntohl(v6->sin6_flowinfo),
                             v6->sin6_scope_id);
    }
    Py_RETURN_NONE;
}

/* Route one datagram: count it, or append it to `samples` / `others`. 0 or -1 (error set). */
static int route(Table *t, const unsigned char *d, Py_ssize_t n, PyObject *data, PyObject *addr,
                 PyObject *samples, PyObject *others) {
    uint32_t ssrc;
    unsigned long long pending;
    if (!is_rtp(d, n)) {
        PyObject *bytes = data;
        if (bytes != NULL)
            Py_INCREF(bytes);
        else if ((bytes = PyBytes_FromStringAndSize((const char *)d, n)) == NULL)
            return -1;
        PyObject *item = PyTuple_Pack(2, bytes, addr);
        Py_DECREF(bytes);
        if (item == NULL) return -1;
        int rc = PyList_Append(others, item);
        Py_DECREF(item);
        return rc;
    }
    int sampled = count(t, d, n, 0, &ssrc, &pending);
    if (sampled != 1) return sampled < 0 ? -1 : 0;
    PyObject *item;
    if (data != NULL)
        item = Py_BuildValue("(kKO)", (unsigned long)ssrc, pending, data);
    else
        item = Py_BuildValue("(kKy#)", (unsigned long)ssrc, pending, (const char *)d, n);
    if (item == NULL) return -1;
    int rc = PyList_Append(samples, item);
    Py_DECREF(item);
    return rc;
}

static PyObject *result(PyObject *samples, PyObject *others) {
    PyObject *out = PyTuple_Pack(2, samples, others);
    Py_DECREF(samples);
    Py_DECREF(others);
    return out;
}

static PyObject *Table_feed(Table *t, PyObject *datagrams) {
    PyObject *seq = PySequence_Fast(datagrams, "feed() takes a sequence of (bytes, address)");
    if (seq == NULL) return NULL;
    PyObject *samples = PyList_New(0), *others = PyList_New(0);
    if (samples == NULL || others == NULL) goto fail;
    for (Py_ssize_t i = 0; i < PySequence_Fast_GET_SIZE(seq); i++) {
        PyObject *pair = PySequence_Fast_GET_ITEM(seq, i);
        if (!PyTuple_Check(pair) || PyTuple_GET_SIZE(pair) != 2 ||
            !PyBytes_Check(PyTuple_GET_ITEM(pair, 0))) {
            PyErr_SetString(PyExc_TypeError, "feed() takes a sequence of (bytes, address)");
            goto fail;
        }
        PyObject *data = PyTuple_GET_ITEM(pair, 0);
        if (route(t, (const unsigned char *)PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data), data,
                  PyTuple_GET_ITEM(pair, 1), samples, others) < 0)
            goto fail;
    }
    Py_DECREF(seq);
    return result(samples, others);
fail:
    Py_DECREF(seq);
    Py_XDECREF(samples);
    Py_XDECREF(others);
    return NULL;
}

static PyObject *Table_drain(Table *t, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs < 1 || nargs > 2) {
        PyErr_SetString(PyExc_TypeError, "drain(fd, max_datagrams=4096)");
        return NULL;
    }
    long fd = PyLong_AsLong(args[0]);
    if (fd == -1 && PyErr_Occurred()) return NULL;
    long limit = nargs > 1 ? PyLong_AsLong(args[1]) : 4096;
    if (limit == -1 && PyErr_Occurred()) return NULL;
    PyObject *samples = PyList_New(0), *others = PyList_New(0);
    if (samples == NULL || others == NULL) goto fail;
    long done = 0;
    while (done < limit) {
        unsigned int want = (unsigned int)(limit - done < RX_BATCH ? limit - done : RX_BATCH);
        for (unsigned int i = 0; i < want; i++) {
            rx_iov[i].iov_base = rx_buf[i];
            rx_iov[i].iov_len = RX_BUFFER + 1;
            memset(&rx_msgs[i].msg_hdr, 0, sizeof(struct msghdr));
            rx_msgs[i].msg_hdr.msg_iov = &rx_iov[i];
            rx_msgs[i].msg_hdr.msg_iovlen = 1;
            rx_msgs[i].msg_hdr.msg_name = &rx_addr[i];
            rx_msgs[i].msg_hdr.msg_namelen = sizeof(rx_addr[i]);
        }
        int got = recvmmsg((int)fd, rx_msgs, want, MSG_DONTWAIT, NULL);
        if (got < 0) {
            if (errno == EINTR) continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK) break;
            if (done > 0) break; /* report what was read (a UDP socket's error is read once) */
            PyErr_SetFromErrno(PyExc_OSError);
            goto fail;
        }
        for (int i = 0; i < got; i++) {
            Py_ssize_t n = (Py_ssize_t)rx_msgs[i].msg_len;
            if (n > RX_BUFFER || (rx_msgs[i].msg_hdr.msg_flags & MSG_TRUNC)) {
                t->truncated++;
                continue;
            }
            const unsigned char *d = rx_buf[i];
            if (is_rtp(d, n)) {
                if (route(t, d, n, NULL, Py_None, samples, others) < 0) goto fail;
                continue;
            }
            PyObject *addr = address(&rx_addr[i]);
            if (addr == NULL) goto fail;
            int rc = route(t, d, n, NULL, addr, samples, others);
            Py_DECREF(addr);
            if (rc < 0) goto fail;
        }
        done += got;
        if ((unsigned int)got < want) break;
    }
    return result(samples, others);
fail:
    Py_XDECREF(samples);
    Py_XDECREF(others);
    return NULL;
}

static PyObject *Table_count_clear(Table *t, PyObject *arg) {
    Py_buffer view;
    if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) < 0) return NULL;
    const unsigned char *d = view.buf;
    Py_ssize_t n = view.len;
    PyObject *out = Py_None;
    if (n >= 12) {
        uint32_t ssrc;
        unsigned long long pending;
        int rc = count(t, d, n, 1, &ssrc, &pending);
        if (rc < 0 || rc == 2) {
            PyBuffer_Release(&view);
            if (rc < 0) return NULL;
            Py_RETURN_NONE;
        }
        out = PyLong_FromUnsignedLong(
            ((uint32_t)d[8] << 24) | ((uint32_t)d[9] << 16) | ((uint32_t)d[10] << 8) | d[11]);
        PyBuffer_Release(&view);
        return out;
    }
    PyBuffer_Release(&view);
    Py_RETURN_NONE;
}

static PyObject *Table_streams(Table *t, PyObject *Py_UNUSED(ignored)) {
    PyObject *out = PyList_New(t->count);
    if (out == NULL) return NULL;
    for (Py_ssize_t i = 0; i < t->count; i++) {
        stream_t *st = &t->streams[i];
        PyObject *row = Py_BuildValue("(kLLKKK)", (unsigned long)st->ssrc, (long long)st->base,
                                      (long long)st->highest, st->received, st->octets,
                                      st->pending);
        if (row == NULL) {
            Py_DECREF(out);
            return NULL;
        }
        PyList_SET_ITEM(out, i, row);
    }
    return out;
}

static int Table_init(Table *t, PyObject *args, PyObject *kwargs) {
    static char *names[] = {"sample_every", "capacity", NULL};
    long sample_every, capacity = 256;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "l|l", names, &sample_every, &capacity))
        return -1;
    if (sample_every < 1 || sample_every > 0x7FFFFFFF || capacity < 1 ||
        capacity > MAX_CAPACITY) {
        PyErr_SetString(PyExc_ValueError, "sample_every >= 1 and 1 <= capacity <= 65536");
        return -1;
    }
    PyMem_Free(t->streams);
    PyMem_Free(t->index);
    t->slots = 8;
    t->streams = PyMem_Malloc(sizeof(stream_t) * (t->slots / 2));
    t->index = PyMem_Malloc(sizeof(int32_t) * t->slots);
    if (t->streams == NULL || t->index == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    for (Py_ssize_t i = 0; i < t->slots; i++) t->index[i] = -1;
    t->count = 0;
    t->capacity = capacity;
    t->sample_every = (uint32_t)sample_every;
    t->packets = t->octets = t->overflow = t->truncated = 0;
    return 0;
}

static void Table_dealloc(Table *t) {
    PyMem_Free(t->streams);
    PyMem_Free(t->index);
    Py_TYPE(t)->tp_free((PyObject *)t);
}

static PyMethodDef Table_methods[] = {
    {"feed", (PyCFunction)Table_feed, METH_O,
     "feed(datagrams) -> (samples, others): count a sequence of (bytes, address)"},
    {"drain", (PyCFunction)(void (*)(void))Table_drain, METH_FASTCALL,
     "drain(fd, max_datagrams=4096) -> (samples, others): read the socket until it is empty"},
    {"count_clear", (PyCFunction)Table_count_clear, METH_O,
     "count_clear(data) -> ssrc or None (short, or no room for its SSRC): count an already "
     "decrypted RTP packet, never a sample"},
    {"streams", (PyCFunction)Table_streams, METH_NOARGS,
     "streams() -> [(ssrc, base, highest, received, octets, pending)] in order of first packet"},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef Table_members[] = {
    {"packets", T_ULONGLONG, offsetof(Table, packets), READONLY, "RTP packets counted"},
    {"octets", T_ULONGLONG, offsetof(Table, octets), READONLY, "RTP octets counted"},
    {"overflow", T_ULONGLONG, offsetof(Table, overflow), READONLY,
     "RTP packets of SSRCs beyond the capacity (in packets, in no stream)"},
    {"truncated", T_ULONGLONG, offsetof(Table, truncated), READONLY,
     "datagrams larger than the receive buffer, dropped"},
    {"capacity", T_PYSSIZET, offsetof(Table, capacity), READONLY, "most streams"},
    {NULL, 0, 0, 0, NULL},
};

static PyTypeObject TableType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "loadtest._rx.Table",
    .tp_basicsize = sizeof(Table),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Per-SSRC counters of one subscriber socket (see loadtest/rx.py)",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Table_init,
    .tp_dealloc = (destructor)Table_dealloc,
    .tp_methods = Table_methods,
    .tp_members = Table_members,
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "loadtest._rx",
    .m_doc = "Batched receive (recvmmsg) and clear-header RTP counting for load-test subscribers.",
    .m_size = -1,
};

PyMODINIT_FUNC PyInit__rx(void) {
    if (PyType_Ready(&TableType) < 0) return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL) return NULL;
    Py_INCREF(&TableType);
    if (PyModule_AddObject(m, "Table", (PyObject *)&TableType) < 0 ||
        PyModule_AddIntConstant(m, "RX_BATCH", RX_BATCH) < 0 ||
        PyModule_AddIntConstant(m, "RX_BUFFER", RX_BUFFER) < 0) {
        Py_DECREF(&TableType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
