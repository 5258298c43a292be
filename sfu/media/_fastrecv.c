/* sfu.media._fastrecv: the receive path of the shared UDP socket (rtc.udp_port), compiled.
 *
 * `Reader.drain` reads the socket with recvmmsg, up to 64 datagrams a call and `budget` a
 * drain, and per datagram: an SRTP packet (RFC 7983 first byte 128..191, not RTCP by RFC 5761's
 * payload types 192..223) from the source address of a registered `Route`, of an SSRC the route
 * knows, is unprotected in place with libsrtp's srtp_unprotect and handed to the route's
 * `on_rtp` as bytes; every other datagram (STUN, DTLS, SRTCP, an SSRC not learnt yet, an
 * unknown address) goes to the reader's `fallback(data, addr)`, the Python path; a datagram
 * over DATAGRAM_SIZE bytes (none of ours is) is dropped and counted. A route knows
 * an SSRC once Python has unprotected one of its packets (`Route.learn`), so that the Python
 * side keeps the bookkeeping of libsrtp's streams (sfu.media.transport.srtp.SrtpUnprotector)
 * and forgets it again (`Route.forget`) when it removes the stream.
 *
 * sfu/media/fastrecv_py.py is the pure-Python reference; the property test holds the two to the
 * same calls with the same bytes. libsrtp is reached through a function pointer handed over by
 * `set_srtp` (pylibsrtp's bundled libsrtp), and per route a `srtp_t` context pointer whose
 * owner (the pylibsrtp Session) the route keeps alive. Bounded: `max_routes` routes per reader,
 * `MAX_KNOWN` SSRCs per route (the oldest is forgotten first, which only sends its packets
 * through Python again).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "_fastpath_api.h"
#include "_sockaddr.h"

#define DATAGRAM_SIZE 2048 /* sfu.media.transport.srtp.BUFFER_SIZE; longer ones are truncated */
#define RECV_BATCH 64
#define MAX_KNOWN 64 /* sfu.media.transport.srtp.MAX_SRTP_STREAMS */
#define MAX_WAKE_S 60.0 /* the longest Stream.arm(wake=...) */
#define MAX_PENDING_GROUPS 64 /* flush groups a drain schedules at its end; more: at once */
/* a send batch holding this many datagrams after one target's share of a fan-out is sent at
 * once (FastpathApi.forward_many): a recvmmsg batch's copies leave destination by destination,
 * not all after the last one's are built (sfu.media.fastrecv_py.FANOUT_FLUSH_AT) */
#define FANOUT_FLUSH_AT 256
#define SEQUENCE_BASE (INT64_C(1) << 16) /* sfu.media.receiver.SEQUENCE_BASE */
#define SPEAKING_DBOV 35                 /* sfu.media.receiver.SPEAKING_DBOV */

typedef int (*srtp_fn)(void *ctx, void *hdr, int *len);
static srtp_fn srtp_unprotect_fn = NULL;


/* ----------------------------------------------------------------------------------- Stream */

/* The per-copy path, from sfu.media._fastpath's capsule, and its `forward` function (what an
 * armed stream stands for), imported when a stream is first armed */
static FastpathApi *fastpath_api = NULL;
static PyObject *fastpath_forward_obj = NULL;

static int
import_fastpath(void)
{
    if (fastpath_api != NULL)
        return 0;
    PyObject *module = PyImport_ImportModule("sfu.media._fastpath");
    if (module == NULL)
        return -1;
    PyObject *forward = PyObject_GetAttrString(module, "forward");
    Py_DECREF(module);
    if (forward == NULL)
        return -1;
    FastpathApi *api = (FastpathApi *)PyCapsule_Import(FASTPATH_CAPSULE, 0);
    if (api == NULL) {
        Py_DECREF(forward);
        return -1;
    }
    fastpath_forward_obj = forward; /* kept for the process's life, as the module is */
    fastpath_api = api;
    return 0;
}

typedef struct {
    PyObject_HEAD
    /* one received layer's counters and sequence numbers (sfu.media.receiver.LayerState) */
    unsigned long long packets, octets;
    double last_arrival;
    int64_t base_seq, max_ext_seq, seq_offset, seq_continue;
    int64_t last_seq; /* the unwrapper's reference (RFC 3550 §A.1) */
    int has_last;     /* ... once a number was unwrapped */
    unsigned long long level_packets, loud_packets, loud_dbov_sum; /* RFC 6464, taken in C */
    /* while armed: the reader takes this SSRC's packets itself */
    int armed;
    uint32_t ssrc;
    int vp8;            /* drop packets whose VP8 descriptor is unreadable, as the receiver does */
    int audio_level_id; /* 0: none */
    /* > 0 while a sink waits for a key frame of the layer: a packet that may start one, and one
     * packet every wake_s seconds (next_wake), go to Python instead */
    double wake_s, next_wake;
    PyObject *targets;  /* a tuple of sfu.media._fastpath.Target */
    PyObject *group;    /* scheduled (`schedule()`) after a packet went to a target, or None */
} StreamObject;

static PyTypeObject StreamType;
static double monotonic_now(void);

static int
stream_init(StreamObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "", kwlist))
        return -1;
    self->packets = self->octets = 0;
    self->last_arrival = 0.0;
    self->base_seq = self->max_ext_seq = self->seq_continue = -1;
    self->seq_offset = SEQUENCE_BASE;
    self->has_last = 0;
    self->level_packets = self->loud_packets = self->loud_dbov_sum = 0;
    return 0;
}

static PyObject *
stream_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    StreamObject *self = (StreamObject *)type->tp_alloc(type, 0);
    if (self != NULL) {
        self->base_seq = self->max_ext_seq = self->seq_continue = -1;
        self->seq_offset = SEQUENCE_BASE;
    }
    return (PyObject *)self;
}

static void
stream_disarm(StreamObject *self)
{
    self->armed = 0;
    Py_CLEAR(self->targets);
    Py_CLEAR(self->group);
}

static void
stream_dealloc(StreamObject *self)
{
    stream_disarm(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* LayerState.on_sequence: extend one 16-bit number; its number in the layer */
static inline int64_t
stream_sequence(StreamObject *self, uint32_t seq16)
{
    int64_t ext;
    if (!self->has_last) {
        ext = seq16 & 0xFFFF;
    } else {
        int64_t last = self->last_seq;
        int64_t d = ((int64_t)seq16 - last) & 0xFFFF;
        if (d > 0x8000 || (d == 0x8000 && (int64_t)(seq16 & 0xFFFF) < (last & 0xFFFF)))
            d -= 0x10000;
        ext = last + d;
    }
    self->last_seq = ext;
    self->has_last = 1;
    if (ext > self->max_ext_seq) {
        if (self->max_ext_seq < 0) { /* the SSRC's first packet */
            self->base_seq = ext;
            if (self->seq_continue >= 0)
                self->seq_offset = self->seq_continue - ext;
        }
        self->max_ext_seq = ext;
    }
    return ext + self->seq_offset;
}

static PyObject *
stream_on_packet(StreamObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "on_packet(sequence_number, size, now)");
        return NULL;
    }
    long seq = PyLong_AsLong(args[0]);
    if (seq == -1 && PyErr_Occurred())
        return NULL;
    Py_ssize_t size = PyLong_AsSsize_t(args[1]);
    if (size == -1 && PyErr_Occurred())
        return NULL;
    double now = PyFloat_AsDouble(args[2]);
    if (now == -1.0 && PyErr_Occurred())
        return NULL;
    if (seq < 0 || seq > 0xFFFF || size < 0) {
        PyErr_SetString(PyExc_ValueError, "sequence_number must be 0..65535, size >= 0");
        return NULL;
    }
    self->packets++;
    self->octets += (unsigned long long)size;
    self->last_arrival = now;
    return PyLong_FromLongLong(stream_sequence(self, (uint32_t)seq));
}

static PyObject *
stream_reset_sequence(StreamObject *self, PyObject *Py_UNUSED(ignored))
{
    self->has_last = 0;
    Py_RETURN_NONE;
}

static PyObject *
stream_arm(StreamObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"ssrc", "targets", "group", "forward", "vp8", "audio_level_id",
                             "wake", NULL};
    unsigned long ssrc;
    PyObject *targets, *group, *forward = NULL;
    int vp8 = 0, level_id = 0;
    double wake = 0.0;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "kO!O|$Opid", kwlist, &ssrc, &PyTuple_Type,
                                     &targets, &group, &forward, &vp8, &level_id, &wake))
        return NULL;
    if (ssrc > 0xFFFFFFFFUL || level_id < 0 || level_id > 255) {
        PyErr_SetString(PyExc_ValueError, "ssrc or audio_level_id out of range");
        return NULL;
    }
    if (!(wake >= 0.0 && wake <= MAX_WAKE_S) || (wake > 0.0 && !vp8)) {
        PyErr_SetString(PyExc_ValueError, "wake must be 0..60 s, and only for VP8");
        return NULL;
    }
    if (import_fastpath() < 0)
        return NULL;
    if (forward != fastpath_forward_obj) {
        PyErr_SetString(PyExc_TypeError, "forward must be sfu.media._fastpath.forward");
        return NULL;
    }
    {
        for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(targets); i++) {
            if (Py_TYPE(PyTuple_GET_ITEM(targets, i)) != fastpath_api->target_type) {
                PyErr_SetString(PyExc_TypeError, "targets must hold sfu.media._fastpath.Target");
                return NULL;
            }
        }
    }
    stream_disarm(self);
    self->targets = Py_NewRef(targets);
    self->group = group == Py_None ? NULL : Py_NewRef(group);
    self->ssrc = (uint32_t)ssrc;
    self->vp8 = vp8;
    self->audio_level_id = level_id;
    self->wake_s = wake;
    self->next_wake = wake > 0.0 ? monotonic_now() + wake : 0.0;
    self->armed = 1;
    Py_RETURN_NONE;
}

static PyObject *
stream_disarm_py(StreamObject *self, PyObject *Py_UNUSED(ignored))
{
    stream_disarm(self);
    Py_RETURN_NONE;
}

static PyObject *
stream_get_last_seq(StreamObject *self, void *c)
{
    if (!self->has_last)
        Py_RETURN_NONE;
    return PyLong_FromLongLong(self->last_seq);
}

static PyObject *
stream_get_armed(StreamObject *self, void *c)
{
    return PyBool_FromLong(self->armed);
}

static PyObject *
stream_get_wake(StreamObject *self, void *c)
{
    return PyFloat_FromDouble(self->armed ? self->wake_s : 0.0);
}

static PyObject *
stream_get_ssrc(StreamObject *self, void *c)
{
    return PyLong_FromUnsignedLong(self->ssrc);
}

/* the int64 fields, settable from Python (within ±2**62, as the forwarder's numbers are) */
#define STREAM_INT64(name)                                                                     \
    static PyObject *stream_get_##name(StreamObject *self, void *c)                            \
    {                                                                                          \
        return PyLong_FromLongLong(self->name);                                                \
    }                                                                                          \
    static int stream_set_##name(StreamObject *self, PyObject *v, void *c)                     \
    {                                                                                          \
        if (v == NULL) {                                                                       \
            PyErr_SetString(PyExc_AttributeError, "cannot delete " #name);                     \
            return -1;                                                                         \
        }                                                                                      \
        long long x = PyLong_AsLongLong(v);                                                    \
        if (x == -1 && PyErr_Occurred())                                                       \
            return -1;                                                                         \
        if (x <= -(INT64_C(1) << 62) || x >= (INT64_C(1) << 62)) {                             \
            PyErr_SetString(PyExc_ValueError, #name " out of range");                          \
            return -1;                                                                         \
        }                                                                                      \
        self->name = x;                                                                        \
        return 0;                                                                              \
    }
STREAM_INT64(base_seq)
STREAM_INT64(max_ext_seq)
STREAM_INT64(seq_offset)
STREAM_INT64(seq_continue)

#define STREAM_GS(name, doc) {#name, (getter)stream_get_##name, (setter)stream_set_##name, doc, NULL}

static PyGetSetDef stream_getset[] = {
    STREAM_GS(base_seq, "the current SSRC's first extended sequence number (-1: none yet)"),
    STREAM_GS(max_ext_seq, "the current SSRC's highest extended sequence number (-1: none yet)"),
    STREAM_GS(seq_offset, "added to an extended number to give its number in the layer"),
    STREAM_GS(seq_continue, "the layer number the next SSRC's first packet gets (-1: none)"),
    {"last_seq", (getter)stream_get_last_seq, NULL,
     "the extended number last unwrapped (None: none since the reset)", NULL},
    {"armed", (getter)stream_get_armed, NULL, "whether the reader takes its packets itself", NULL},
    {"ssrc", (getter)stream_get_ssrc, NULL, "the SSRC it was armed for", NULL},
    {"wake", (getter)stream_get_wake, NULL,
     "seconds between the packets handed to Python while a sink waits for a key frame (0: none)",
     NULL},
    {NULL},
};

static PyMemberDef stream_members[] = {
    {"packets", T_ULONGLONG, offsetof(StreamObject, packets), 0, "packets received"},
    {"octets", T_ULONGLONG, offsetof(StreamObject, octets), 0, "their bytes (plaintext)"},
    {"last_arrival", T_DOUBLE, offsetof(StreamObject, last_arrival), 0,
     "monotonic time of the last packet"},
    {"level_packets", T_ULONGLONG, offsetof(StreamObject, level_packets), 0,
     "packets taken here with an audio level"},
    {"loud_packets", T_ULONGLONG, offsetof(StreamObject, loud_packets), 0,
     "... louder than -35 dBov"},
    {"loud_dbov_sum", T_ULONGLONG, offsetof(StreamObject, loud_dbov_sum), 0,
     "the sum of their levels (-dBov)"},
    {NULL},
};

static PyMethodDef stream_methods[] = {
    {"on_packet", (PyCFunction)(void (*)(void))stream_on_packet, METH_FASTCALL,
     "on_packet(sequence_number, size, now): count one packet received in Python; its "
     "extended number in the layer."},
    {"reset_sequence", (PyCFunction)stream_reset_sequence, METH_NOARGS,
     "Forget the unwrapper's reference: the next number starts again (a new SSRC)."},
    {"arm", (PyCFunction)(void (*)(void))stream_arm, METH_VARARGS | METH_KEYWORDS,
     "arm(ssrc, targets, group, *, forward, vp8=False, audio_level_id=0, wake=0.0): the reader "
     "takes `ssrc`'s packets itself from now on, forwarded to `targets` (a tuple) as `forward` "
     "(sfu.media._fastpath.forward) would; with `wake` (VP8), a packet that may start a key "
     "frame and one packet every `wake` seconds go to on_rtp instead."},
    {"disarm", (PyCFunction)stream_disarm_py, METH_NOARGS,
     "Hand its packets to Python again."},
    {NULL, NULL, 0, NULL},
};

/* ------------------------------------------------------------------------------------ Route */

typedef struct {
    PyObject_HEAD
    struct sockaddr_storage addr;
    socklen_t addrlen;
    void *srtp;
    PyObject *owner;
    PyObject *on_rtp;
    uint32_t known[MAX_KNOWN];
    StreamObject *streams[MAX_KNOWN]; /* the stream on_rtp gave for each known SSRC, or NULL */
    int nknown;
    int registered;
    unsigned long long rtp_packets, octets, unprotect_failures, fallbacks, taken, taken_octets;
} RouteObject;

static PyTypeObject RouteType;

/* The part of an address that names the peer: family, port and IP (not flow or scope). */
static int
addr_key(const struct sockaddr_storage *a, uint8_t key[20])
{
    memset(key, 0, 20);
    if (a->ss_family == AF_INET) {
        const struct sockaddr_in *s = (const struct sockaddr_in *)a;
        key[0] = 4;
        memcpy(key + 2, &s->sin_port, 2);
        memcpy(key + 4, &s->sin_addr, 4);
        return 1;
    }
    if (a->ss_family == AF_INET6) {
        const struct sockaddr_in6 *s = (const struct sockaddr_in6 *)a;
        key[0] = 6;
        memcpy(key + 2, &s->sin6_port, 2);
        memcpy(key + 4, &s->sin6_addr, 16);
        return 1;
    }
    return 0;
}

static int
route_init(RouteObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"addr", "on_rtp", "srtp", "owner", NULL};
    PyObject *addr, *on_rtp, *owner = Py_None;
    unsigned long long srtp = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OO|$KO", kwlist, &addr, &on_rtp, &srtp, &owner))
        return -1;
    if (self->on_rtp != NULL) {
        PyErr_SetString(PyExc_RuntimeError, "Route already initialised");
        return -1;
    }
    if (!PyCallable_Check(on_rtp)) {
        PyErr_SetString(PyExc_TypeError, "on_rtp must be callable");
        return -1;
    }
    if (srtp && srtp_unprotect_fn == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "set_srtp() was not called");
        return -1;
    }
    if (parse_addr(addr, &self->addr, &self->addrlen) < 0)
        return -1;
    self->on_rtp = Py_NewRef(on_rtp);
    self->owner = Py_NewRef(owner);
    self->srtp = (void *)(uintptr_t)srtp;
    return 0;
}

static void
route_dealloc(RouteObject *self)
{
    for (int i = 0; i < self->nknown; i++)
        Py_CLEAR(self->streams[i]);
    Py_CLEAR(self->on_rtp);
    Py_CLEAR(self->owner);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* the index of `ssrc` among the known ones, or -1 */
static int
route_index(const RouteObject *r, uint32_t ssrc)
{
    for (int i = 0; i < r->nknown; i++)
        if (r->known[i] == ssrc)
            return i;
    return -1;
}

static void
route_remove_at(RouteObject *r, int i)
{
    StreamObject *st = r->streams[i];
    memmove(r->known + i, r->known + i + 1, (size_t)(r->nknown - i - 1) * sizeof r->known[0]);
    memmove(r->streams + i, r->streams + i + 1,
            (size_t)(r->nknown - i - 1) * sizeof r->streams[0]);
    r->nknown--;
    r->streams[r->nknown] = NULL;
    Py_XDECREF(st);
}

static PyObject *
route_learn(RouteObject *self, PyObject *arg)
{
    unsigned long ssrc = PyLong_AsUnsignedLong(arg);
    if (ssrc == (unsigned long)-1 && PyErr_Occurred())
        return NULL;
    if (ssrc > 0xFFFFFFFFUL) {
        PyErr_SetString(PyExc_ValueError, "ssrc out of range");
        return NULL;
    }
    if (route_index(self, (uint32_t)ssrc) >= 0)
        Py_RETURN_NONE;
    if (self->nknown == MAX_KNOWN) /* forget the oldest */
        route_remove_at(self, 0);
    self->streams[self->nknown] = NULL;
    self->known[self->nknown++] = (uint32_t)ssrc;
    Py_RETURN_NONE;
}

static PyObject *
route_forget(RouteObject *self, PyObject *arg)
{
    unsigned long ssrc = PyLong_AsUnsignedLong(arg);
    if (ssrc == (unsigned long)-1 && PyErr_Occurred())
        return NULL;
    if (ssrc <= 0xFFFFFFFFUL) {
        int i = route_index(self, (uint32_t)ssrc);
        if (i >= 0)
            route_remove_at(self, i);
    }
    Py_RETURN_NONE;
}

static PyObject *
route_get_known(RouteObject *self, void *c)
{
    PyObject *list = PyList_New(self->nknown);
    if (list == NULL)
        return NULL;
    for (int i = 0; i < self->nknown; i++) {
        PyObject *v = PyLong_FromUnsignedLong(self->known[i]);
        if (v == NULL) {
            Py_DECREF(list);
            return NULL;
        }
        PyList_SET_ITEM(list, i, v);
    }
    return list;
}

static PyObject *
route_get_addr(RouteObject *self, void *c)
{
    return addr_to_tuple(&self->addr);
}

static PyObject *
route_stream(RouteObject *self, PyObject *arg)
{
    unsigned long ssrc = PyLong_AsUnsignedLong(arg);
    if (ssrc == (unsigned long)-1 && PyErr_Occurred())
        return NULL;
    int i = ssrc <= 0xFFFFFFFFUL ? route_index(self, (uint32_t)ssrc) : -1;
    PyObject *st = i >= 0 ? (PyObject *)self->streams[i] : NULL;
    return Py_NewRef(st != NULL ? st : Py_None);
}

static PyObject *
route_get_registered(RouteObject *self, void *c)
{
    return PyBool_FromLong(self->registered);
}

static PyMethodDef route_methods[] = {
    {"learn", (PyCFunction)route_learn, METH_O,
     "Take packets of this SSRC here from now on (libsrtp holds a stream for it)."},
    {"forget", (PyCFunction)route_forget, METH_O,
     "Send packets of this SSRC through the fallback again (its stream was removed)."},
    {"stream", (PyCFunction)route_stream, METH_O,
     "The Stream on_rtp last returned for this SSRC, or None."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef route_getset[] = {
    {"known", (getter)route_get_known, NULL, "the SSRCs taken here, oldest first", NULL},
    {"addr", (getter)route_get_addr, NULL, "the source address", NULL},
    {"registered", (getter)route_get_registered, NULL, "whether a reader routes to it", NULL},
    {NULL},
};

static PyMemberDef route_members[] = {
    {"rtp_packets", T_ULONGLONG, offsetof(RouteObject, rtp_packets), READONLY,
     "RTP packets unprotected and handed to on_rtp"},
    {"octets", T_ULONGLONG, offsetof(RouteObject, octets), READONLY, "their plaintext bytes"},
    {"unprotect_failures", T_ULONGLONG, offsetof(RouteObject, unprotect_failures), READONLY,
     "packets libsrtp refused (replayed, forged, truncated): dropped"},
    {"fallbacks", T_ULONGLONG, offsetof(RouteObject, fallbacks), READONLY,
     "datagrams from its address given to the fallback"},
    {"taken", T_ULONGLONG, offsetof(RouteObject, taken), READONLY,
     "of rtp_packets, those an armed Stream took without calling on_rtp"},
    {"taken_octets", T_ULONGLONG, offsetof(RouteObject, taken_octets), READONLY,
     "their plaintext bytes"},
    {NULL},
};

/* ----------------------------------------------------------------------------------- Reader */

typedef struct {
    PyObject_HEAD
    int fd;
    int draining;
    Py_ssize_t max_routes;
    PyObject *fallback;
    /* routes: open addressing on the address key, linear probing, tombstones */
    RouteObject **table;
    Py_ssize_t buckets, used, tombstones;
    uint8_t (*data)[DATAGRAM_SIZE];
    struct mmsghdr msgs[RECV_BATCH];
    struct iovec iov[RECV_BATCH];
    struct sockaddr_storage addrs[RECV_BATCH];
    unsigned long long datagrams, syscalls, truncated, fallback_errors;
    /* what armed streams took, for the process counters (`take_counts`) */
    unsigned long long in_packets, in_octets, out_packets, out_octets, dropped;
    PyObject *pending[MAX_PENDING_GROUPS]; /* flush groups to schedule at the end of the drain */
    int npending;
    /* what armed streams took from this recvmmsg batch, fanned out by `reader_fan_out` before
     * the next Python call or recvmmsg: per packet the stream's targets and flush group (held) */
    FastpathPacket fan[RECV_BATCH];
    PyObject *fan_targets[RECV_BATCH], *fan_group[RECV_BATCH];
    int nfan;
} ReaderObject;

#define TOMBSTONE ((RouteObject *)1)

static uint64_t
hash_key(const uint8_t key[20])
{
    uint64_t h = 1469598103934665603ULL;
    for (int i = 0; i < 20; i++)
        h = (h ^ key[i]) * 1099511628211ULL;
    return h;
}

static int
same_peer(const struct sockaddr_storage *a, const struct sockaddr_storage *b)
{
    uint8_t ka[20], kb[20];
    return addr_key(a, ka) && addr_key(b, kb) && memcmp(ka, kb, 20) == 0;
}

/* the bucket holding a route for `addr`, or -1 */
static Py_ssize_t
reader_find(ReaderObject *self, const struct sockaddr_storage *addr)
{
    uint8_t key[20];
    if (self->buckets == 0 || !addr_key(addr, key))
        return -1;
    Py_ssize_t mask = self->buckets - 1, b = (Py_ssize_t)(hash_key(key) & (uint64_t)mask);
    for (Py_ssize_t n = 0; n < self->buckets; n++, b = (b + 1) & mask) {
        RouteObject *r = self->table[b];
        if (r == NULL)
            return -1;
        if (r != TOMBSTONE && same_peer(&r->addr, addr))
            return b;
    }
    return -1;
}

static int
reader_insert(ReaderObject *self, RouteObject *route)
{
    uint8_t key[20];
    addr_key(&route->addr, key);
    Py_ssize_t mask = self->buckets - 1, b = (Py_ssize_t)(hash_key(key) & (uint64_t)mask);
    while (self->table[b] != NULL && self->table[b] != TOMBSTONE)
        b = (b + 1) & mask;
    if (self->table[b] == TOMBSTONE)
        self->tombstones--;
    self->table[b] = (RouteObject *)Py_NewRef(route);
    self->used++;
    route->registered = 1;
    return 0;
}

/* room for one more route: a table at most half full, rebuilt without tombstones */
static int
reader_reserve(ReaderObject *self)
{
    if (self->buckets && 2 * (self->used + self->tombstones + 1) <= self->buckets)
        return 0;
    Py_ssize_t buckets = 16;
    while (buckets < 4 * (self->used + 1))
        buckets <<= 1;
    RouteObject **old = self->table;
    Py_ssize_t old_buckets = self->buckets;
    self->table = PyMem_Calloc((size_t)buckets, sizeof *self->table);
    if (self->table == NULL) {
        self->table = old;
        PyErr_NoMemory();
        return -1;
    }
    self->buckets = buckets;
    self->used = self->tombstones = 0;
    for (Py_ssize_t i = 0; i < old_buckets; i++) {
        RouteObject *r = old[i];
        if (r != NULL && r != TOMBSTONE) {
            reader_insert(self, r);
            Py_DECREF(r); /* the insert took a new reference */
        }
    }
    PyMem_Free(old);
    return 0;
}

static int
reader_init(ReaderObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"fd", "fallback", "max_routes", NULL};
    int fd;
    PyObject *fallback;
    Py_ssize_t max_routes = 65536;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "iO|$n", kwlist, &fd, &fallback, &max_routes))
        return -1;
    if (self->fallback != NULL) {
        PyErr_SetString(PyExc_RuntimeError, "Reader already initialised");
        return -1;
    }
    if (!PyCallable_Check(fallback)) {
        PyErr_SetString(PyExc_TypeError, "fallback must be callable");
        return -1;
    }
    if (max_routes < 1 || max_routes > (1 << 20)) {
        PyErr_SetString(PyExc_ValueError, "max_routes must be 1..2**20");
        return -1;
    }
    self->data = PyMem_Malloc((size_t)RECV_BATCH * DATAGRAM_SIZE);
    if (self->data == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    int copy = fcntl(fd, F_DUPFD_CLOEXEC, 0);
    if (copy < 0) {
        PyErr_SetFromErrno(PyExc_OSError);
        return -1;
    }
    self->fd = copy;
    self->max_routes = max_routes;
    self->fallback = Py_NewRef(fallback);
    return 0;
}

static PyObject *
reader_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    ReaderObject *self = (ReaderObject *)type->tp_alloc(type, 0);
    if (self != NULL)
        self->fd = -1;
    return (PyObject *)self;
}

static void
reader_clear_routes(ReaderObject *self)
{
    RouteObject **table = self->table;
    Py_ssize_t buckets = self->buckets;
    self->table = NULL;
    self->buckets = self->used = self->tombstones = 0;
    for (Py_ssize_t i = 0; i < buckets; i++) {
        RouteObject *r = table[i];
        if (r != NULL && r != TOMBSTONE) {
            r->registered = 0;
            Py_DECREF(r);
        }
    }
    PyMem_Free(table);
}

static void
reader_dealloc(ReaderObject *self)
{
    if (self->fd >= 0)
        close(self->fd);
    reader_clear_routes(self);
    PyMem_Free(self->data);
    for (int i = 0; i < self->npending; i++)
        Py_CLEAR(self->pending[i]);
    self->npending = 0;
    Py_CLEAR(self->fallback);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *
reader_add(ReaderObject *self, PyObject *arg)
{
    if (Py_TYPE(arg) != &RouteType || ((RouteObject *)arg)->on_rtp == NULL) {
        PyErr_SetString(PyExc_TypeError, "add() takes an initialised Route");
        return NULL;
    }
    RouteObject *route = (RouteObject *)arg;
    if (self->fallback == NULL) {
        PyErr_SetString(PyExc_TypeError, "Reader.__init__ was not called");
        return NULL;
    }
    if (route->registered) {
        PyErr_SetString(PyExc_ValueError, "the route is registered already");
        return NULL;
    }
    if (reader_find(self, &route->addr) >= 0) {
        PyErr_SetString(PyExc_ValueError, "another route has this address");
        return NULL;
    }
    if (self->used >= self->max_routes) {
        PyErr_SetString(PyExc_OverflowError, "too many routes");
        return NULL;
    }
    if (reader_reserve(self) < 0)
        return NULL;
    reader_insert(self, route);
    Py_RETURN_NONE;
}

static PyObject *
reader_remove(ReaderObject *self, PyObject *arg)
{
    if (Py_TYPE(arg) != &RouteType) {
        PyErr_SetString(PyExc_TypeError, "remove() takes a Route");
        return NULL;
    }
    RouteObject *route = (RouteObject *)arg;
    Py_ssize_t b = route->registered ? reader_find(self, &route->addr) : -1;
    if (b < 0 || self->table[b] != route)
        Py_RETURN_FALSE;
    self->table[b] = TOMBSTONE;
    self->used--;
    self->tombstones++;
    route->registered = 0;
    Py_DECREF(route);
    Py_RETURN_TRUE;
}

static PyObject *
reader_lookup(ReaderObject *self, PyObject *addr)
{
    struct sockaddr_storage a;
    socklen_t len;
    if (parse_addr(addr, &a, &len) < 0)
        return NULL;
    Py_ssize_t b = reader_find(self, &a);
    return Py_NewRef(b < 0 ? Py_None : (PyObject *)self->table[b]);
}

/* a flush group to schedule at the end of the drain (at once when too many are pending);
 * -1 with an exception set when its schedule() raised */
static int
reader_schedule(ReaderObject *self, PyObject *group)
{
    for (int i = 0; i < self->npending; i++)
        if (self->pending[i] == group)
            return 0;
    if (self->npending < MAX_PENDING_GROUPS) {
        self->pending[self->npending++] = Py_NewRef(group);
        return 0;
    }
    PyObject *r = PyObject_CallMethod(group, "schedule", NULL);
    Py_XDECREF(r);
    return r == NULL ? -1 : 0;
}

static void
reader_run_pending(ReaderObject *self)
{
    /* in the order they were first scheduled; a schedule() that schedules more is not expected
     * (FlushGroup.schedule only registers with the loop's Flusher), so the list is taken whole */
    int count = self->npending;
    PyObject *groups[MAX_PENDING_GROUPS];
    memcpy(groups, self->pending, (size_t)count * sizeof groups[0]);
    self->npending = 0;
    for (int i = 0; i < count; i++) {
        PyObject *r = PyObject_CallMethod(groups[i], "schedule", NULL);
        if (r == NULL)
            PyErr_WriteUnraisable(groups[i]);
        Py_XDECREF(r);
        Py_DECREF(groups[i]);
    }
}

static inline double
monotonic_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts); /* what time.monotonic() reads */
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* Whether a VP8 payload (d[off:end]) may start a key frame (sfu.media.rtp.vp8.is_keyframe true,
 * or raising: a frame start whose descriptor or payload header is cut short) */
/* The size of the VP8 payload descriptor at d[off:end] (RFC 7741 §4.2), or -1 when it is cut
 * short (the extension byte or the picture id missing) */
static Py_ssize_t
vp8_descriptor_size(const uint8_t *d, Py_ssize_t off, Py_ssize_t end)
{
    Py_ssize_t size = 1;
    if (d[off] & 0x80) {
        if (off + 1 >= end)
            return -1;
        uint8_t xb = d[off + 1];
        size = 2;
        if (xb & 0x80) {
            if (off + 2 >= end)
                return -1;
            size += (d[off + 2] & 0x80) ? 2 : 1;
        }
        if (xb & 0x40)
            size += 1;
        if (xb & 0x30)
            size += 1;
    }
    return size;
}

static int
vp8_may_start_keyframe(const uint8_t *d, Py_ssize_t off, Py_ssize_t end)
{
    if (off >= end) /* no payload: padding, never a key frame */
        return 0;
    if ((d[off] & 0x17) != 0x10)
        return 0;
    Py_ssize_t size = vp8_descriptor_size(d, off, end);
    if (size < 0 || off + size >= end)
        return 1;
    return !(d[off + size] & 0x01);
}

/* The copies of what armed streams took since the last call: per (targets, flush group), in the
 * order first taken, its packets in order, target by target (`forward_many`), so that a frame's
 * packets reach each destination as one run and the first destinations need not wait for the
 * last ones' copies. Errors are reported (sys.unraisablehook), as a refused `forward` was. */
static void
reader_fan_out(ReaderObject *self)
{
    int count = self->nfan;
    self->nfan = 0;
    char done[RECV_BATCH] = {0};
    FastpathPacket run[RECV_BATCH];
    for (int i = 0; i < count; i++) {
        if (done[i])
            continue;
        PyObject *targets = self->fan_targets[i], *group = self->fan_group[i];
        Py_ssize_t n = 0;
        for (int j = i; j < count; j++)
            if (!done[j] && self->fan_targets[j] == targets && self->fan_group[j] == group) {
                done[j] = 1;
                run[n++] = self->fan[j];
            }
        Py_ssize_t copies = 0, octets = 0;
        if (fastpath_api->forward_many(targets, run, n, FANOUT_FLUSH_AT, &copies, &octets) < 0)
            PyErr_WriteUnraisable(targets); /* a target refused its arguments, or no memory */
        if (copies) {
            self->out_packets += (unsigned long long)copies;
            self->out_octets += (unsigned long long)octets;
            if (group != NULL && reader_schedule(self, group) < 0)
                PyErr_WriteUnraisable(group);
        }
    }
    /* last: a destructor run here may call back into the reader (nfan is 0 by now) */
    for (int i = 0; i < count; i++) {
        Py_DECREF(self->fan[i].data);
        Py_DECREF(self->fan_targets[i]);
        Py_XDECREF(self->fan_group[i]);
    }
}

/* What sfu.media.receiver's Python path does with one decrypted packet of an armed stream's SSRC
 * (RtpDemuxer.on_rtp, TrackReceiver.on_rtp), in C: 1 taken, 0 not (a packet RtpPacket.parse
 * refuses: Python drops and counts it), -1 with an exception set. Its copies
 * go out with the batch's others (`reader_fan_out`). */
static int
stream_take(ReaderObject *reader, StreamObject *st, const uint8_t *d, Py_ssize_t n)
{
    /* RtpPacket.parse: V=2, CSRCs, the extension block (RFC 8285 elements), padding */
    if (n < 12 || (d[0] & 0xC0) != 0x80)
        return 0;
    Py_ssize_t off = 12 + 4 * (d[0] & 0x0F);
    if (off > n)
        return 0;
    const uint8_t *level = NULL;
    Py_ssize_t level_len = 0;
    if (d[0] & 0x10) {
        if (off + 4 > n)
            return 0;
        uint32_t profile = (uint32_t)d[off] << 8 | d[off + 1];
        Py_ssize_t i = off + 4, end = i + 4 * ((Py_ssize_t)d[off + 2] << 8 | d[off + 3]);
        if (end > n)
            return 0;
        if (profile == 0xBEDE) {
            while (i < end) {
                uint8_t b = d[i];
                if (!b) { /* padding */
                    i++;
                    continue;
                }
                if (b > 0xEF || b < 0x10) /* id 15, or id 0 with a length: stop */
                    break;
                Py_ssize_t j = i + 2 + (b & 0x0F);
                if (j > end)
                    return 0;
                if ((b >> 4) == st->audio_level_id) { /* the last one wins, as in the dict */
                    level = d + i + 1;
                    level_len = j - i - 1;
                }
                i = j;
            }
        } else if ((profile & 0xFFF0) == 0x1000) {
            while (i < end) {
                uint8_t id = d[i];
                if (!id) {
                    i++;
                    continue;
                }
                if (i + 1 >= end)
                    return 0;
                Py_ssize_t j = i + 2 + d[i + 1];
                if (j > end)
                    return 0;
                if (id == st->audio_level_id) {
                    level = d + i + 2;
                    level_len = j - i - 2;
                }
                i = j;
            }
        }
        off = end;
    }
    Py_ssize_t padding = 0;
    if (d[0] & 0x20) {
        padding = d[n - 1];
        if (padding == 0 || off + padding > n)
            return 0;
    }
    if (!st->audio_level_id)
        level = NULL;
    double now = monotonic_now();
    if (st->wake_s > 0.0) {
        /* a sink waits for a key frame: what it waits for, and now and then a packet to ask
         * again, reach the receiver in Python (so does a frame start it cannot read) */
        if (now >= st->next_wake || vp8_may_start_keyframe(d, off, n - padding)) {
            st->next_wake = now + st->wake_s;
            return 0;
        }
    }
    /* RtpDemuxer.on_rtp's counters, then TrackReceiver.on_rtp */
    reader->in_packets++;
    reader->in_octets += (unsigned long long)n;
    st->packets++;
    st->octets += (unsigned long long)n;
    st->last_arrival = now;
    int64_t seq = stream_sequence(st, (uint32_t)d[2] << 8 | d[3]);
    if (seq < 0) { /* before the layer's first packet, by more than a cycle */
        reader->dropped++;
        return 1;
    }
    if (level != NULL && level_len > 0) {
        st->level_packets++;
        uint8_t dbov = level[0] & 0x7F;
        if (dbov < SPEAKING_DBOV) {
            st->loud_packets++;
            st->loud_dbov_sum += dbov;
        }
    }
    Py_ssize_t end = n - padding;
    if (st->vp8 && end > off && (d[off] & 0x17) == 0x10) {
        /* vp8.is_keyframe's checks: a first packet of a frame whose descriptor or payload
         * header is cut short is not forwarded */
        Py_ssize_t size = vp8_descriptor_size(d, off, end);
        if (size < 0 || off + size >= end)
            return 1;
    }
    if (st->targets == NULL || PyTuple_GET_SIZE(st->targets) == 0)
        return 1;
    if (reader->nfan >= RECV_BATCH) /* not expected: one entry per datagram of the batch */
        reader_fan_out(reader);
    PyObject *data = PyBytes_FromStringAndSize((const char *)d, n);
    if (data == NULL)
        return -1;
    int k = reader->nfan++;
    reader->fan[k] = (FastpathPacket){.packet = data, .data = data, .ext_seq = seq,
                                      .payload_offset = off, .padding = padding, .now = now};
    reader->fan_targets[k] = Py_NewRef(st->targets);
    reader->fan_group[k] = Py_XNewRef(st->group);
    return 1;
}

/* One datagram: 0 handled, -1 with an exception set (only when memory runs out). */
static int
reader_one(ReaderObject *self, uint8_t *data, Py_ssize_t len, const struct sockaddr_storage *addr)
{
    RouteObject *route = NULL;
    if (len >= 12 && data[0] >= 128 && data[0] <= 191 && !(data[1] >= 192 && data[1] <= 223)) {
        Py_ssize_t b = reader_find(self, addr);
        if (b >= 0) {
            route = self->table[b];
            uint32_t ssrc = (uint32_t)data[8] << 24 | (uint32_t)data[9] << 16 |
                            (uint32_t)data[10] << 8 | data[11];
            int k = route_index(route, ssrc);
            if (k >= 0) {
                int n = (int)len;
                if (route->srtp != NULL && srtp_unprotect_fn(route->srtp, data, &n) != 0) {
                    route->unprotect_failures++;
                    return 0;
                }
                if (n < 0 || n > len)
                    n = 0;
                route->rtp_packets++;
                route->octets += (unsigned long long)n;
                StreamObject *st = route->streams[k];
                if (st != NULL && st->armed && st->ssrc == ssrc) {
                    Py_INCREF(st);
                    Py_INCREF(route);
                    int taken = stream_take(self, st, data, n);
                    if (taken < 0) /* a target refused its arguments, or memory ran out */
                        PyErr_WriteUnraisable((PyObject *)st);
                    else if (taken > 0) {
                        route->taken++;
                        route->taken_octets += (unsigned long long)n;
                    }
                    Py_DECREF(st);
                    Py_DECREF(route);
                    if (taken != 0)
                        return 0;
                }
                reader_fan_out(self); /* what was taken before goes out before Python runs */
                PyObject *plain = PyBytes_FromStringAndSize((const char *)data, n);
                if (plain == NULL)
                    return -1;
                Py_INCREF(route); /* on_rtp may remove the route */
                PyObject *r = PyObject_CallOneArg(route->on_rtp, plain);
                Py_DECREF(plain);
                if (r == NULL) {
                    PyErr_WriteUnraisable(route->on_rtp);
                } else if (r == Py_None || Py_TYPE(r) == &StreamType) {
                    /* the stream to take this SSRC's next packets (None: none) */
                    k = route_index(route, ssrc); /* on_rtp may have learnt or forgotten */
                    if (k >= 0 && (PyObject *)route->streams[k] != r) {
                        StreamObject *old = route->streams[k];
                        route->streams[k] =
                            r == Py_None ? NULL : (StreamObject *)Py_NewRef(r);
                        Py_XDECREF(old);
                    }
                }
                Py_XDECREF(r);
                Py_DECREF(route);
                return 0;
            }
        }
    } else if (len > 0) {
        Py_ssize_t b = reader_find(self, addr);
        if (b >= 0)
            route = self->table[b];
    }
    if (route != NULL)
        route->fallbacks++;
    reader_fan_out(self);
    PyObject *bytes = PyBytes_FromStringAndSize((const char *)data, len);
    PyObject *peer = bytes ? addr_to_tuple(addr) : NULL;
    if (peer == NULL) {
        Py_XDECREF(bytes);
        return -1;
    }
    PyObject *r = PyObject_CallFunctionObjArgs(self->fallback, bytes, peer, NULL);
    Py_DECREF(bytes);
    Py_DECREF(peer);
    if (r == NULL) {
        self->fallback_errors++;
        PyErr_WriteUnraisable(self->fallback);
    }
    Py_XDECREF(r);
    return 0;
}

static PyObject *
reader_drain(ReaderObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    Py_ssize_t budget = 256;
    if (nargs > 1) {
        PyErr_SetString(PyExc_TypeError, "drain([budget])");
        return NULL;
    }
    if (nargs == 1 && (budget = PyLong_AsSsize_t(args[0])) == -1 && PyErr_Occurred())
        return NULL;
    if (self->fallback == NULL) {
        PyErr_SetString(PyExc_TypeError, "Reader.__init__ was not called");
        return NULL;
    }
    if (self->draining) {
        PyErr_SetString(PyExc_RuntimeError, "drain() called from one of its callbacks");
        return NULL;
    }
    self->draining = 1;
    Py_INCREF(self);
    Py_ssize_t total = 0;
    while (total < budget && self->fd >= 0) {
        unsigned int want = RECV_BATCH;
        if (budget - total < RECV_BATCH)
            want = (unsigned int)(budget - total);
        for (unsigned int i = 0; i < want; i++) {
            self->iov[i].iov_base = self->data[i];
            self->iov[i].iov_len = DATAGRAM_SIZE;
            memset(&self->msgs[i].msg_hdr, 0, sizeof self->msgs[i].msg_hdr);
            self->msgs[i].msg_hdr.msg_iov = &self->iov[i];
            self->msgs[i].msg_hdr.msg_iovlen = 1;
            self->msgs[i].msg_hdr.msg_name = &self->addrs[i];
            self->msgs[i].msg_hdr.msg_namelen = sizeof self->addrs[i];
        }
        self->syscalls++;
        int n = recvmmsg(self->fd, self->msgs, want, MSG_DONTWAIT, NULL);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            break; /* EAGAIN: nothing more; anything else: the loop will call again */
        }
        self->datagrams += (unsigned long long)n;
        for (int i = 0; i < n; i++) {
            Py_ssize_t len = self->msgs[i].msg_len;
            if ((self->msgs[i].msg_hdr.msg_flags & MSG_TRUNC) || len > DATAGRAM_SIZE) {
                self->truncated++; /* no SRTP, STUN or DTLS datagram of ours is this long */
                continue;
            }
            if (reader_one(self, self->data[i], len, &self->addrs[i]) < 0) {
                reader_fan_out(self);
                self->draining = 0;
                reader_run_pending(self);
                Py_DECREF(self);
                return NULL;
            }
        }
        reader_fan_out(self);
        total += n;
        if ((unsigned int)n < want)
            break;
    }
    self->draining = 0;
    reader_run_pending(self);
    if (self->fd < 0) /* closed by a callback */
        reader_clear_routes(self);
    Py_DECREF(self);
    return PyLong_FromSsize_t(total);
}

static PyObject *
reader_take_counts(ReaderObject *self, PyObject *Py_UNUSED(ignored))
{
    PyObject *r = Py_BuildValue("(KKKKK)", self->in_packets, self->in_octets, self->out_packets,
                                self->out_octets, self->dropped);
    if (r != NULL)
        self->in_packets = self->in_octets = self->out_packets = self->out_octets =
            self->dropped = 0;
    return r;
}

static PyObject *
reader_close(ReaderObject *self, PyObject *Py_UNUSED(ignored))
{
    if (self->fd >= 0) {
        close(self->fd);
        self->fd = -1;
    }
    if (!self->draining)
        reader_clear_routes(self);
    Py_RETURN_NONE;
}

static Py_ssize_t
reader_len(ReaderObject *self)
{
    return self->used;
}

static PyObject *
reader_get_fd(ReaderObject *self, void *c)
{
    return PyLong_FromLong(self->fd);
}

static PyMethodDef reader_methods[] = {
    {"drain", (PyCFunction)(void (*)(void))reader_drain, METH_FASTCALL,
     "drain(budget=256): read up to `budget` datagrams (recvmmsg) and hand each on; returns "
     "how many were read."},
    {"add", (PyCFunction)reader_add, METH_O, "Route datagrams from the route's address to it."},
    {"remove", (PyCFunction)reader_remove, METH_O, "Stop routing to it; False if it was not."},
    {"lookup", (PyCFunction)reader_lookup, METH_O, "The route of (host, port), or None."},
    {"take_counts", (PyCFunction)reader_take_counts, METH_NOARGS,
     "(packets in, bytes in, copies out, their bytes, packets dropped) that armed streams took "
     "since the last call, for the process counters; zeroes them."},
    {"close", (PyCFunction)reader_close, METH_NOARGS,
     "Release the duplicated descriptor and the routes; idempotent."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef reader_getset[] = {
    {"fd", (getter)reader_get_fd, NULL, "the duplicated socket descriptor (-1: closed)", NULL},
    {NULL},
};

static PyMemberDef reader_members[] = {
    {"datagrams", T_ULONGLONG, offsetof(ReaderObject, datagrams), READONLY, "datagrams read"},
    {"syscalls", T_ULONGLONG, offsetof(ReaderObject, syscalls), READONLY, "recvmmsg calls"},
    {"truncated", T_ULONGLONG, offsetof(ReaderObject, truncated), READONLY,
     "datagrams longer than 2048 bytes: dropped"},
    {"fallback_errors", T_ULONGLONG, offsetof(ReaderObject, fallback_errors), READONLY,
     "exceptions the fallback raised (reported as unraisable)"},
    {NULL},
};

static PySequenceMethods reader_as_sequence = {.sq_length = (lenfunc)reader_len};

static PyObject *
fastrecv_set_srtp(PyObject *module, PyObject *arg)
{
    unsigned long long unprotect = PyLong_AsUnsignedLongLong(arg);
    if (unprotect == (unsigned long long)-1 && PyErr_Occurred())
        return NULL;
    if (!unprotect) {
        PyErr_SetString(PyExc_ValueError, "null function pointer");
        return NULL;
    }
    srtp_unprotect_fn = (srtp_fn)(uintptr_t)unprotect;
    Py_RETURN_NONE;
}

static PyMethodDef module_methods[] = {
    {"set_srtp", fastrecv_set_srtp, METH_O,
     "set_srtp(unprotect): the address of libsrtp's srtp_unprotect (an int)."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject RouteType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "sfu.media._fastrecv.Route",
    .tp_basicsize = sizeof(RouteObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Route(addr, on_rtp, *, srtp=0, owner=None): one peer's SRTP, by source address.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)route_init,
    .tp_dealloc = (destructor)route_dealloc,
    .tp_methods = route_methods,
    .tp_members = route_members,
    .tp_getset = route_getset,
};

static PyTypeObject StreamType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "sfu.media._fastrecv.Stream",
    .tp_basicsize = sizeof(StreamObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Stream(): one received layer's counters and sequence numbers; armed, the reader\n"
              "takes its SSRC's packets and forwards them itself.",
    .tp_new = stream_new,
    .tp_init = (initproc)stream_init,
    .tp_dealloc = (destructor)stream_dealloc,
    .tp_methods = stream_methods,
    .tp_members = stream_members,
    .tp_getset = stream_getset,
};

static PyTypeObject ReaderType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "sfu.media._fastrecv.Reader",
    .tp_basicsize = sizeof(ReaderObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Reader(fd, fallback, *, max_routes=65536): batched reads of one UDP socket.",
    .tp_new = reader_new,
    .tp_init = (initproc)reader_init,
    .tp_dealloc = (destructor)reader_dealloc,
    .tp_methods = reader_methods,
    .tp_members = reader_members,
    .tp_getset = reader_getset,
    .tp_as_sequence = &reader_as_sequence,
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT, "sfu.media._fastrecv",
    "The compiled receive path of the shared UDP socket (see sfu/media/_fastrecv.c).", -1,
    module_methods,
};

PyMODINIT_FUNC
PyInit__fastrecv(void)
{
    if (PyType_Ready(&RouteType) < 0 || PyType_Ready(&ReaderType) < 0 ||
        PyType_Ready(&StreamType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module_def);
    if (m == NULL)
        return NULL;
    if (PyModule_AddObjectRef(m, "Route", (PyObject *)&RouteType) < 0 ||
        PyModule_AddObjectRef(m, "Reader", (PyObject *)&ReaderType) < 0 ||
        PyModule_AddObjectRef(m, "Stream", (PyObject *)&StreamType) < 0 ||
        PyModule_AddIntConstant(m, "MAX_KNOWN", MAX_KNOWN) < 0 ||
        PyModule_AddIntConstant(m, "DATAGRAM_SIZE", DATAGRAM_SIZE) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
