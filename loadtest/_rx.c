/* loadtest._rx: batched receive and clear-header counting for the load tester's subscribers.
 *
 * One `Table` per subscriber socket. `drain(fd)` reads every datagram queued on the socket with
 * recvmmsg (up to RX_BATCH per syscall, into buffers shared by the process: the GIL is held
 * throughout), counts each SRTP packet from its clear RTP header (RFC 3550 §5.1, RFC 3711 §3.1)
 * in a bounded per-SSRC table, and returns only what Python must see: the sampled RTP packets
 * (every `sample_every`-th of a stream, the first one included) and every datagram that is not
 * RTP (STUN, DTLS, SRTCP: RFC 7983 first-byte demux, RFC 5761 RTP/RTCP split). `feed` runs the
 * same counting over datagrams given as bytes; loadtest/rx.py holds the pure-Python twin.
 * A `Group` holds many sockets (each with its table) behind one epoll descriptor: one event-loop
 * callback drains every ready socket. Sampled packets carry their SO_TIMESTAMPNS receive time.
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
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

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

static int table_ready(Table *t) {
    if (t->index == NULL) {
        PyErr_SetString(PyExc_ValueError, "Table.__init__ was not called");
        return -1;
    }
    return 0;
}

static struct mmsghdr rx_msgs[RX_BATCH];
static struct iovec rx_iov[RX_BATCH];
static struct sockaddr_storage rx_addr[RX_BATCH];
static unsigned char rx_buf[RX_BATCH][RX_BUFFER + 1];
static union {
    char buf[CMSG_SPACE(sizeof(struct timespec))];
    struct cmsghdr align;
} rx_ctl[RX_BATCH];

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

/* The kernel's receive time (SO_TIMESTAMPNS, CLOCK_REALTIME) of a datagram, in ns; 0 if none. */
static long long arrival_ns(const struct msghdr *hdr) {
    if (hdr == NULL) return 0;
    for (struct cmsghdr *c = CMSG_FIRSTHDR((struct msghdr *)hdr); c != NULL;
         c = CMSG_NXTHDR((struct msghdr *)hdr, c)) {
        if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_TIMESTAMPNS) {
            struct timespec ts;
            memcpy(&ts, CMSG_DATA(c), sizeof(ts));
            return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
        }
    }
    return 0;
}

/* Route one datagram: count it, or append it to `samples` / `others`. `data` is its bytes object
 * when there is one (feed), `hdr` its message when read from a socket. 0 or -1 (error set). */
static int route(Table *t, const unsigned char *d, Py_ssize_t n, PyObject *data,
                 const struct msghdr *hdr, PyObject *samples, PyObject *others) {
    uint32_t ssrc;
    unsigned long long pending;
    if (!is_rtp(d, n)) {
        PyObject *bytes = data, *addr;
        if (bytes != NULL)
            Py_INCREF(bytes);
        else if ((bytes = PyBytes_FromStringAndSize((const char *)d, n)) == NULL)
            return -1;
        if (hdr != NULL)
            addr = address((const struct sockaddr_storage *)hdr->msg_name);
        else
            addr = Py_NewRef(Py_None);
        if (addr == NULL) {
            Py_DECREF(bytes);
            return -1;
        }
        PyObject *item = PyTuple_Pack(2, bytes, addr);
        Py_DECREF(bytes);
        Py_DECREF(addr);
        if (item == NULL) return -1;
        int rc = PyList_Append(others, item);
        Py_DECREF(item);
        return rc;
    }
    int sampled = count(t, d, n, 0, &ssrc, &pending);
    if (sampled != 1) return sampled < 0 ? -1 : 0;
    PyObject *item;
    if (data != NULL)
        item = Py_BuildValue("(kKOL)", (unsigned long)ssrc, pending, data, 0LL);
    else
        item = Py_BuildValue("(kKy#L)", (unsigned long)ssrc, pending, (const char *)d, n,
                             arrival_ns(hdr));
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
    if (table_ready(t) < 0) return NULL;
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
        const unsigned char *d = (const unsigned char *)PyBytes_AS_STRING(data);
        Py_ssize_t n = PyBytes_GET_SIZE(data);
        if (!is_rtp(d, n)) {
            PyObject *item = PyTuple_Pack(2, data, PyTuple_GET_ITEM(pair, 1));
            if (item == NULL || PyList_Append(others, item) < 0) {
                Py_XDECREF(item);
                goto fail;
            }
            Py_DECREF(item);
            continue;
        }
        if (route(t, d, n, data, NULL, samples, others) < 0) goto fail;
    }
    Py_DECREF(seq);
    return result(samples, others);
fail:
    Py_DECREF(seq);
    Py_XDECREF(samples);
    Py_XDECREF(others);
    return NULL;
}

/* Read `fd` until it is empty (or `limit` datagrams) into samples/others. 0, or -1 with a Python
 * error set; an OS error when nothing was read goes to *err (errno), else it is dropped (a UDP
 * socket's pending error is read once). */
static int drain_into(Table *t, int fd, long limit, PyObject *samples, PyObject *others, int *err) {
    long done = 0;
    *err = 0;
    while (done < limit) {
        unsigned int want = (unsigned int)(limit - done < RX_BATCH ? limit - done : RX_BATCH);
        for (unsigned int i = 0; i < want; i++) {
            rx_msgs[i].msg_hdr.msg_namelen = sizeof(rx_addr[i]);
            rx_msgs[i].msg_hdr.msg_controllen = sizeof(rx_ctl[i]);
            rx_msgs[i].msg_hdr.msg_flags = 0;
        }
        int got = recvmmsg(fd, rx_msgs, want, MSG_DONTWAIT, NULL);
        if (got < 0) {
            if (errno == EINTR) continue;
            if (errno != EAGAIN && errno != EWOULDBLOCK && done == 0) *err = errno;
            break;
        }
        for (int i = 0; i < got; i++) {
            Py_ssize_t n = (Py_ssize_t)rx_msgs[i].msg_len;
            if (n > RX_BUFFER || (rx_msgs[i].msg_hdr.msg_flags & MSG_TRUNC)) {
                t->truncated++;
                continue;
            }
            if (route(t, rx_buf[i], n, NULL, &rx_msgs[i].msg_hdr, samples, others) < 0) return -1;
        }
        done += got;
        if ((unsigned int)got < want) break;
    }
    return 0;
}

static PyObject *Table_drain(Table *t, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs < 1 || nargs > 2) {
        PyErr_SetString(PyExc_TypeError, "drain(fd, max_datagrams=4096)");
        return NULL;
    }
    if (table_ready(t) < 0) return NULL;
    long fd = PyLong_AsLong(args[0]);
    if (fd == -1 && PyErr_Occurred()) return NULL;
    long limit = nargs > 1 ? PyLong_AsLong(args[1]) : 4096;
    if (limit == -1 && PyErr_Occurred()) return NULL;
    int err;
    PyObject *samples = PyList_New(0), *others = PyList_New(0);
    if (samples == NULL || others == NULL || drain_into(t, (int)fd, limit, samples, others, &err) < 0) {
        Py_XDECREF(samples);
        Py_XDECREF(others);
        return NULL;
    }
    if (err) {
        Py_DECREF(samples);
        Py_DECREF(others);
        errno = err;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    return result(samples, others);
}

static PyObject *Table_count_clear(Table *t, PyObject *arg) {
    if (table_ready(t) < 0) return NULL;
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

/* -- Group: many subscriber sockets behind one epoll descriptor -------------------------------
 * The event loop watches `fileno()`; each wake-up, `poll()` reads every ready member socket to
 * the end with its own table, so one loop callback serves all the sockets that got data. */
#define MAX_EVENTS 256

typedef struct {
    PyObject_HEAD
    int epfd;
    PyObject *members; /* dict: fd -> (table, owner) */
} Group;

static int Group_init(Group *g, PyObject *args, PyObject *kwargs) {
    static char *names[] = {NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "", names)) return -1;
    if (g->epfd < 0) g->epfd = epoll_create1(EPOLL_CLOEXEC);
    if (g->epfd < 0) {
        PyErr_SetFromErrno(PyExc_OSError);
        return -1;
    }
    if (g->members == NULL && (g->members = PyDict_New()) == NULL) return -1;
    return 0;
}

static PyObject *Group_new(PyTypeObject *type, PyObject *args, PyObject *kwargs) {
    (void)args;
    (void)kwargs;
    Group *g = (Group *)type->tp_alloc(type, 0);
    if (g != NULL) g->epfd = -1;
    return (PyObject *)g;
}

static void Group_dealloc(Group *g) {
    if (g->epfd >= 0) close(g->epfd);
    Py_XDECREF(g->members);
    Py_TYPE(g)->tp_free((PyObject *)g);
}

static int group_ready(Group *g) {
    if (g->epfd < 0 || g->members == NULL) {
        PyErr_SetString(PyExc_ValueError, "the group is closed");
        return -1;
    }
    return 0;
}

static PyObject *Group_add(Group *g, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 3 || !PyObject_TypeCheck(args[1], &TableType)) {
        PyErr_SetString(PyExc_TypeError, "add(fd, table: Table, owner)");
        return NULL;
    }
    if (group_ready(g) < 0 || table_ready((Table *)args[1]) < 0) return NULL;
    long fd = PyLong_AsLong(args[0]);
    if (fd == -1 && PyErr_Occurred()) return NULL;
    PyObject *entry = PyTuple_Pack(2, args[1], args[2]);
    if (entry == NULL) return NULL;
    if (PyDict_SetItem(g->members, args[0], entry) < 0) {
        Py_DECREF(entry);
        return NULL;
    }
    Py_DECREF(entry);
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = (int)fd};
    if (epoll_ctl(g->epfd, EPOLL_CTL_ADD, (int)fd, &ev) < 0) {
        PyErr_SetFromErrno(PyExc_OSError);
        PyObject *type, *value, *tb;
        PyErr_Fetch(&type, &value, &tb);
        if (PyDict_DelItem(g->members, args[0]) < 0) PyErr_Clear();
        PyErr_Restore(type, value, tb);
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *Group_remove(Group *g, PyObject *arg) {
    if (group_ready(g) < 0) return NULL;
    long fd = PyLong_AsLong(arg);
    if (fd == -1 && PyErr_Occurred()) return NULL;
    epoll_ctl(g->epfd, EPOLL_CTL_DEL, (int)fd, NULL); /* gone already if the fd was closed */
    if (PyDict_DelItem(g->members, arg) < 0) {
        if (!PyErr_ExceptionMatches(PyExc_KeyError)) return NULL;
        PyErr_Clear();
    }
    Py_RETURN_NONE;
}

static PyObject *Group_poll(Group *g, PyObject *Py_UNUSED(ignored)) {
    if (group_ready(g) < 0) return NULL;
    struct epoll_event events[MAX_EVENTS];
    int ready = epoll_wait(g->epfd, events, MAX_EVENTS, 0);
    if (ready < 0) {
        if (errno == EINTR) return PyList_New(0);
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    PyObject *out = PyList_New(0);
    if (out == NULL) return NULL;
    for (int i = 0; i < ready; i++) {
        PyObject *key = PyLong_FromLong(events[i].data.fd);
        if (key == NULL) goto fail;
        PyObject *entry = PyDict_GetItemWithError(g->members, key);
        Py_DECREF(key);
        if (entry == NULL) {
            if (PyErr_Occurred()) goto fail;
            continue;
        }
        Table *t = (Table *)PyTuple_GET_ITEM(entry, 0);
        PyObject *samples = PyList_New(0), *others = PyList_New(0);
        int err;
        if (samples == NULL || others == NULL ||
            drain_into(t, events[i].data.fd, 4096, samples, others, &err) < 0) {
            Py_XDECREF(samples);
            Py_XDECREF(others);
            goto fail;
        }
        if (err || PyList_GET_SIZE(samples) || PyList_GET_SIZE(others)) {
            PyObject *item = Py_BuildValue("(OOOi)", PyTuple_GET_ITEM(entry, 1), samples, others, err);
            if (item == NULL || PyList_Append(out, item) < 0) {
                Py_XDECREF(item);
                Py_DECREF(samples);
                Py_DECREF(others);
                goto fail;
            }
            Py_DECREF(item);
        }
        Py_DECREF(samples);
        Py_DECREF(others);
    }
    return out;
fail:
    Py_DECREF(out);
    return NULL;
}

static PyObject *Group_fileno(Group *g, PyObject *Py_UNUSED(ignored)) {
    if (group_ready(g) < 0) return NULL;
    return PyLong_FromLong(g->epfd);
}

static PyObject *Group_len(Group *g, PyObject *Py_UNUSED(ignored)) {
    return PyLong_FromSsize_t(g->members ? PyDict_GET_SIZE(g->members) : 0);
}

static PyObject *Group_close(Group *g, PyObject *Py_UNUSED(ignored)) {
    if (g->epfd >= 0) close(g->epfd);
    g->epfd = -1;
    Py_CLEAR(g->members);
    Py_RETURN_NONE;
}

static PyMethodDef Group_methods[] = {
    {"add", (PyCFunction)(void (*)(void))Group_add, METH_FASTCALL,
     "add(fd, table, owner): read fd with table; poll() names it by owner"},
    {"remove", (PyCFunction)Group_remove, METH_O, "remove(fd)"},
    {"poll", (PyCFunction)Group_poll, METH_NOARGS,
     "poll() -> [(owner, samples, others, errno)]: drain every ready member (never blocks)"},
    {"fileno", (PyCFunction)Group_fileno, METH_NOARGS, "the epoll descriptor to watch"},
    {"members", (PyCFunction)Group_len, METH_NOARGS, "how many sockets are in the group"},
    {"close", (PyCFunction)Group_close, METH_NOARGS, "close the epoll descriptor"},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject GroupType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "loadtest._rx.Group",
    .tp_basicsize = sizeof(Group),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Subscriber sockets read behind one epoll descriptor (see loadtest/rx.py)",
    .tp_new = Group_new,
    .tp_init = (initproc)Group_init,
    .tp_dealloc = (destructor)Group_dealloc,
    .tp_methods = Group_methods,
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "loadtest._rx",
    .m_doc = "Batched receive (recvmmsg) and clear-header RTP counting for load-test subscribers.",
    .m_size = -1,
};

PyMODINIT_FUNC PyInit__rx(void) {
    for (int i = 0; i < RX_BATCH; i++) {
        rx_iov[i].iov_base = rx_buf[i];
        rx_iov[i].iov_len = RX_BUFFER + 1;
        rx_msgs[i].msg_hdr.msg_iov = &rx_iov[i];
        rx_msgs[i].msg_hdr.msg_iovlen = 1;
        rx_msgs[i].msg_hdr.msg_name = &rx_addr[i];
        rx_msgs[i].msg_hdr.msg_control = rx_ctl[i].buf;
    }
    if (PyType_Ready(&TableType) < 0 || PyType_Ready(&GroupType) < 0) return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL) return NULL;
    Py_INCREF(&TableType);
    Py_INCREF(&GroupType);
    if (PyModule_AddObject(m, "Table", (PyObject *)&TableType) < 0 ||
        PyModule_AddObject(m, "Group", (PyObject *)&GroupType) < 0 ||
        PyModule_AddIntConstant(m, "RX_BATCH", RX_BATCH) < 0 ||
        PyModule_AddIntConstant(m, "RX_BUFFER", RX_BUFFER) < 0) {
        Py_DECREF(&TableType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
