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
#include <unistd.h>

#include "_sockaddr.h"

#define DATAGRAM_SIZE 2048 /* sfu.media.transport.srtp.BUFFER_SIZE; longer ones are truncated */
#define RECV_BATCH 64
#define MAX_KNOWN 64 /* sfu.media.transport.srtp.MAX_SRTP_STREAMS */

typedef int (*srtp_fn)(void *ctx, void *hdr, int *len);
static srtp_fn srtp_unprotect_fn = NULL;

/* ------------------------------------------------------------------------------------ Route */

typedef struct {
    PyObject_HEAD
    struct sockaddr_storage addr;
    socklen_t addrlen;
    void *srtp;
    PyObject *owner;
    PyObject *on_rtp;
    uint32_t known[MAX_KNOWN];
    int nknown;
    int registered;
    unsigned long long rtp_packets, octets, unprotect_failures, fallbacks;
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
    Py_CLEAR(self->on_rtp);
    Py_CLEAR(self->owner);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int
route_knows(const RouteObject *r, uint32_t ssrc)
{
    for (int i = 0; i < r->nknown; i++)
        if (r->known[i] == ssrc)
            return 1;
    return 0;
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
    if (route_knows(self, (uint32_t)ssrc))
        Py_RETURN_NONE;
    if (self->nknown == MAX_KNOWN) { /* forget the oldest */
        memmove(self->known, self->known + 1, (MAX_KNOWN - 1) * sizeof self->known[0]);
        self->nknown--;
    }
    self->known[self->nknown++] = (uint32_t)ssrc;
    Py_RETURN_NONE;
}

static PyObject *
route_forget(RouteObject *self, PyObject *arg)
{
    unsigned long ssrc = PyLong_AsUnsignedLong(arg);
    if (ssrc == (unsigned long)-1 && PyErr_Occurred())
        return NULL;
    for (int i = 0; i < self->nknown; i++) {
        if (self->known[i] == (uint32_t)ssrc) {
            memmove(self->known + i, self->known + i + 1,
                    (size_t)(self->nknown - i - 1) * sizeof self->known[0]);
            self->nknown--;
            break;
        }
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
route_get_registered(RouteObject *self, void *c)
{
    return PyBool_FromLong(self->registered);
}

static PyMethodDef route_methods[] = {
    {"learn", (PyCFunction)route_learn, METH_O,
     "Take packets of this SSRC here from now on (libsrtp holds a stream for it)."},
    {"forget", (PyCFunction)route_forget, METH_O,
     "Send packets of this SSRC through the fallback again (its stream was removed)."},
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
            if (route_knows(route, ssrc)) {
                int n = (int)len;
                if (route->srtp != NULL && srtp_unprotect_fn(route->srtp, data, &n) != 0) {
                    route->unprotect_failures++;
                    return 0;
                }
                if (n < 0 || n > len)
                    n = 0;
                PyObject *plain = PyBytes_FromStringAndSize((const char *)data, n);
                if (plain == NULL)
                    return -1;
                route->rtp_packets++;
                route->octets += (unsigned long long)n;
                Py_INCREF(route); /* on_rtp may remove the route */
                PyObject *r = PyObject_CallOneArg(route->on_rtp, plain);
                Py_DECREF(plain);
                if (r == NULL)
                    PyErr_WriteUnraisable(route->on_rtp);
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
                self->draining = 0;
                Py_DECREF(self);
                return NULL;
            }
        }
        total += n;
        if ((unsigned int)n < want)
            break;
    }
    self->draining = 0;
    if (self->fd < 0) /* closed by a callback */
        reader_clear_routes(self);
    Py_DECREF(self);
    return PyLong_FromSsize_t(total);
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
    if (PyType_Ready(&RouteType) < 0 || PyType_Ready(&ReaderType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module_def);
    if (m == NULL)
        return NULL;
    if (PyModule_AddObjectRef(m, "Route", (PyObject *)&RouteType) < 0 ||
        PyModule_AddObjectRef(m, "Reader", (PyObject *)&ReaderType) < 0 ||
        PyModule_AddIntConstant(m, "MAX_KNOWN", MAX_KNOWN) < 0 ||
        PyModule_AddIntConstant(m, "DATAGRAM_SIZE", DATAGRAM_SIZE) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
