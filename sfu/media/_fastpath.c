/* sfu.media._fastpath: the per-copy forwarding path, compiled.
 *
 * For one received RTP packet and the down tracks that forward it, `forward` does every per-copy
 * step in one call: the header rewrite (SSRC, payload type, sequence number, timestamp, and the
 * VP8 PictureID / TL0PICIDX / KEYIDX renumbering after a switch), the NACK-history slot, SRTP
 * protection and the append to the socket's send batch. `Batch.flush` sends a batch with one
 * sendmmsg; with GSO on, the datagrams are grouped by destination (each destination's order
 * kept) and each equal-size run to one destination is one UDP GSO message.
 *
 * Python keeps every decision: which targets a packet goes to, switches, offsets. A `Target`
 * holds the per-down-track parameters, set from Python when they change, and the state `forward`
 * updates (the last sent sequence number and timestamp, counters, the history ring).
 * sfu/media/fastpath_py.py is the pure-Python reference of exactly this function.
 *
 * libsrtp is reached through function pointers handed over by `set_srtp` (pylibsrtp's bundled
 * libsrtp, built on OpenSSL), and per target a `srtp_t` context pointer; this module links to
 * nothing but libc.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/udp.h>
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "_fastpath_api.h"
#include "_sockaddr.h"

#ifndef UDP_SEGMENT
#define UDP_SEGMENT 103
#endif
#ifndef SOL_UDP
#define SOL_UDP 17
#endif

#define HISTORY_SIZE 512 /* sfu.media.forwarder.HISTORY_SIZE */
#define HISTORY_MASK (HISTORY_SIZE - 1)
#define SLOT_SIZE 2048         /* sfu.media.transport.srtp.BUFFER_SIZE */
#define SRTP_TRAILER 144       /* SRTP_MAX_TRAILER_LEN (libsrtp 2.x) */
#define SRTCP_TRAILER 148      /* SRTP_MAX_SRTCP_TRAILER_LEN */
#define MAX_SEGMENTS 64        /* UDP_MAX_SEGMENTS */
#define MAX_GSO_BYTES 65000
#define MAX_MSGS 256           /* messages per sendmmsg call */
#define SEQ_LIMIT (INT64_C(1) << 62)

typedef int (*srtp_fn)(void *ctx, void *hdr, int *len);
static srtp_fn srtp_protect_fn = NULL;
static srtp_fn srtp_protect_rtcp_fn = NULL;

/* ------------------------------------------------------------------------------------ Batch */

typedef struct {
    uint8_t data[SLOT_SIZE];
    struct sockaddr_storage addr;
    socklen_t addrlen;
    int len;
} Slot;

typedef struct {
    PyObject_HEAD
    int fd;
    int gso;
    Py_ssize_t count;
    Py_ssize_t allocated;
    Py_ssize_t buckets;
    Py_ssize_t capacity;
    Slot *slots;
    Slot **seq;         /* flush order: the slots, grouped by destination when GSO is on */
    Py_ssize_t *chain;  /* grouping scratch: next slot of the same destination */
    Py_ssize_t *table;  /* grouping scratch: open-addressing table of (first, last) slots */
    unsigned long long sent, dropped, syscalls, flushes, gso_datagrams, auto_flushes;
    /* sent by forward_many in the middle of a fan-out: flushes, and the datagrams in them */
    unsigned long long fanout_flushes, fanout_datagrams;
} BatchObject;

static PyTypeObject BatchType;

static int
batch_init(BatchObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"fd", "gso", "capacity", NULL};
    int fd = -1, gso = 0;
    Py_ssize_t capacity = 1024;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "i|$pn", kwlist, &fd, &gso, &capacity))
        return -1;
    if (capacity < 1 || capacity > 65536) {
        PyErr_SetString(PyExc_ValueError, "capacity must be 1..65536");
        return -1;
    }
    if (self->fd >= 0) {
        PyErr_SetString(PyExc_RuntimeError, "Batch already initialised");
        return -1;
    }
    if (fd >= 0) {
        int copy = fcntl(fd, F_DUPFD_CLOEXEC, 0);
        if (copy < 0) {
            PyErr_SetFromErrno(PyExc_OSError);
            return -1;
        }
        self->fd = copy;
    }
    self->gso = gso;
    self->capacity = capacity;
    return 0;
}

static PyObject *
batch_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    BatchObject *self = (BatchObject *)type->tp_alloc(type, 0);
    if (self != NULL) {
        self->fd = -1;
        self->capacity = 1024; /* usable even if __init__ is never called */
    }
    return (PyObject *)self;
}

static void
batch_dealloc(BatchObject *self)
{
    if (self->fd >= 0)
        close(self->fd);
    PyMem_Free(self->slots);
    PyMem_Free(self->seq);
    PyMem_Free(self->chain);
    PyMem_Free(self->table);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static Py_ssize_t batch_send(BatchObject *self);

/* The next free slot, growing the array (doubling) up to the capacity; a full batch is sent
 * first. NULL with an exception set only when memory runs out. */
static Slot *
batch_slot(BatchObject *self)
{
    if (self->count >= self->capacity) {
        self->auto_flushes++;
        batch_send(self);
    }
    if (self->count >= self->allocated) {
        Py_ssize_t n = self->allocated ? self->allocated * 2 : 16;
        if (n > self->capacity)
            n = self->capacity;
        Py_ssize_t buckets = 1;
        while (buckets < 2 * n)
            buckets <<= 1;
        Slot *slots = PyMem_Realloc(self->slots, (size_t)n * sizeof(Slot));
        if (slots != NULL)
            self->slots = slots;
        Slot **seq = PyMem_Realloc(self->seq, (size_t)n * sizeof(Slot *));
        if (seq != NULL)
            self->seq = seq;
        Py_ssize_t *chain = PyMem_Realloc(self->chain, (size_t)n * sizeof(Py_ssize_t));
        if (chain != NULL)
            self->chain = chain;
        Py_ssize_t *table = PyMem_Realloc(self->table, (size_t)buckets * 2 * sizeof(Py_ssize_t));
        if (table != NULL)
            self->table = table;
        if (slots == NULL || seq == NULL || chain == NULL || table == NULL) {
            PyErr_NoMemory();
            return NULL;
        }
        self->allocated = n;
        self->buckets = buckets;
    }
    return &self->slots[self->count];
}

static int
is_gso_unsupported(int err)
{
    return err == EIO || err == EINVAL || err == ENOPROTOOPT || err == EOPNOTSUPP || err == EMSGSIZE;
}

static int
same_destination(const Slot *a, const Slot *b)
{
    return a->addrlen == b->addrlen && memcmp(&a->addr, &b->addr, a->addrlen) == 0;
}

/* self->seq = the slots in order, or (GSO) grouped by destination: each destination's datagrams
 * keep their order, destinations come in the order of their first datagram. O(count). */
static void
batch_order(BatchObject *self, Py_ssize_t count)
{
    if (!self->gso) {
        for (Py_ssize_t i = 0; i < count; i++)
            self->seq[i] = &self->slots[i];
        return;
    }
    Py_ssize_t mask = self->buckets - 1, *table = self->table, *chain = self->chain;
    for (Py_ssize_t b = 0; b < self->buckets; b++)
        table[2 * b] = -1;
    Py_ssize_t groups = 0;
    for (Py_ssize_t i = 0; i < count; i++) {
        const Slot *s = &self->slots[i];
        const uint8_t *a = (const uint8_t *)&s->addr;
        uint64_t h = 1469598103934665603ULL; /* FNV-1a */
        for (socklen_t k = 0; k < s->addrlen; k++)
            h = (h ^ a[k]) * 1099511628211ULL;
        Py_ssize_t b = (Py_ssize_t)(h & (uint64_t)mask);
        while (table[2 * b] >= 0 && !same_destination(&self->slots[table[2 * b]], s))
            b = (b + 1) & mask;
        chain[i] = -1;
        if (table[2 * b] < 0) {
            table[2 * b] = i;
            self->seq[groups++] = (Slot *)s; /* heads first, in order of appearance */
        } else {
            chain[table[2 * b + 1]] = i;
        }
        table[2 * b + 1] = i;
    }
    /* expand the heads into their chains, back to front so no head is overwritten unread */
    Py_ssize_t out = count;
    for (Py_ssize_t g = groups - 1; g >= 0; g--) {
        Py_ssize_t n = 0;
        for (Py_ssize_t i = self->seq[g] - self->slots; i >= 0; i = chain[i])
            n++;
        out -= n;
        Py_ssize_t k = out;
        for (Py_ssize_t i = self->seq[g] - self->slots; i >= 0; i = chain[i])
            self->seq[k++] = &self->slots[i];
    }
}

/* Send every queued datagram, in order (with GSO: in order per destination, grouped so that
 * each destination's equal-size run is one message); returns how many were sent. Nothing blocks: what the
 * socket refuses is dropped and counted. */
static Py_ssize_t
batch_send(BatchObject *self)
{
    Py_ssize_t count = self->count, i = 0, sent = 0;
    self->count = 0;
    if (count == 0)
        return 0;
    self->flushes++;
    if (self->fd < 0) {
        self->dropped += (unsigned long long)count;
        return 0;
    }
    batch_order(self, count);
    Slot **seq = self->seq;
    struct mmsghdr msgs[MAX_MSGS];
    struct iovec iov[MAX_MSGS * 4];
    Py_ssize_t first[MAX_MSGS + 1];
    union {
        char buf[CMSG_SPACE(sizeof(uint16_t))];
        struct cmsghdr align;
    } control[MAX_MSGS];
    while (i < count) {
        /* lay out up to MAX_MSGS messages from slot i on */
        int n = 0;
        Py_ssize_t j = i, used_iov = 0;
        while (j < count && n < MAX_MSGS) {
            Slot *s = seq[j];
            Py_ssize_t end = j + 1;
            if (self->gso) {
                Py_ssize_t limit = j + MAX_SEGMENTS;
                if (limit > j + MAX_GSO_BYTES / s->len)
                    limit = j + MAX_GSO_BYTES / s->len;
                if (limit > count)
                    limit = count;
                if (limit - j > (Py_ssize_t)(sizeof iov / sizeof iov[0]) - used_iov)
                    limit = j + (Py_ssize_t)(sizeof iov / sizeof iov[0]) - used_iov;
                while (end < limit && seq[end]->len == s->len && same_destination(seq[end], s))
                    end++;
                if (end < limit && seq[end]->len < s->len && same_destination(seq[end], s))
                    end++; /* the last segment may be shorter */
            }
            if (used_iov + (end - j) > (Py_ssize_t)(sizeof iov / sizeof iov[0]))
                break;
            struct msghdr *h = &msgs[n].msg_hdr;
            memset(h, 0, sizeof *h);
            h->msg_name = &s->addr;
            h->msg_namelen = s->addrlen;
            h->msg_iov = &iov[used_iov];
            h->msg_iovlen = (size_t)(end - j);
            for (Py_ssize_t k = j; k < end; k++) {
                iov[used_iov].iov_base = seq[k]->data;
                iov[used_iov].iov_len = (size_t)seq[k]->len;
                used_iov++;
            }
            if (end - j > 1) {
                h->msg_control = control[n].buf;
                h->msg_controllen = sizeof control[n].buf;
                struct cmsghdr *c = CMSG_FIRSTHDR(h);
                c->cmsg_level = SOL_UDP;
                c->cmsg_type = UDP_SEGMENT;
                c->cmsg_len = CMSG_LEN(sizeof(uint16_t));
                uint16_t segment = (uint16_t)s->len;
                memcpy(CMSG_DATA(c), &segment, sizeof segment);
            }
            first[n] = j;
            n++;
            j = end;
        }
        first[n] = j;
        self->syscalls++;
        int r = sendmmsg(self->fd, msgs, (unsigned int)n, MSG_DONTWAIT);
        if (r > 0) {
            for (int m = 0; m < r; m++)
                if (first[m + 1] - first[m] > 1)
                    self->gso_datagrams += (unsigned long long)(first[m + 1] - first[m]);
            sent += first[r] - i;
            i = first[r];
            continue;
        }
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0 && first[1] - first[0] > 1 && is_gso_unsupported(errno)) {
            self->gso = 0; /* this socket or route cannot segment: lay the run out again */
            continue;
        }
        if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == ENOBUFS)) {
            self->dropped += (unsigned long long)(count - i); /* the socket is full */
            break;
        }
        /* one message failed (an ICMP error reported on this send, say): drop it, go on */
        self->dropped += (unsigned long long)(first[1] - first[0]);
        i = first[1];
    }
    self->sent += (unsigned long long)sent;
    return sent;
}

static PyObject *
batch_flush(BatchObject *self, PyObject *Py_UNUSED(ignored))
{
    return PyLong_FromSsize_t(batch_send(self));
}


static PyObject *
batch_pending(BatchObject *self, PyObject *Py_UNUSED(ignored))
{
    PyObject *list = PyList_New(self->count);
    if (list == NULL)
        return NULL;
    for (Py_ssize_t i = 0; i < self->count; i++) {
        Slot *s = &self->slots[i];
        PyObject *addr = addr_to_tuple(&s->addr);
        PyObject *item = addr ? Py_BuildValue("(y#N)", s->data, (Py_ssize_t)s->len, addr) : NULL;
        if (item == NULL) {
            Py_DECREF(list);
            return NULL;
        }
        PyList_SET_ITEM(list, i, item);
    }
    return list;
}

static PyObject *
batch_clear(BatchObject *self, PyObject *Py_UNUSED(ignored))
{
    self->dropped += (unsigned long long)self->count;
    self->count = 0;
    Py_RETURN_NONE;
}

static PyObject *
batch_close(BatchObject *self, PyObject *Py_UNUSED(ignored))
{
    self->dropped += (unsigned long long)self->count;
    self->count = 0;
    if (self->fd >= 0) {
        close(self->fd);
        self->fd = -1;
    }
    Py_RETURN_NONE;
}

static Py_ssize_t
batch_len(BatchObject *self)
{
    return self->count;
}

static PyMethodDef batch_methods[] = {
    {"flush", (PyCFunction)batch_flush, METH_NOARGS,
     "Send every queued datagram (sendmmsg; GSO runs when enabled); returns how many were sent."},
    {"pending", (PyCFunction)batch_pending, METH_NOARGS,
     "The queued datagrams as (bytes, address) pairs, in order (for tests)."},
    {"clear", (PyCFunction)batch_clear, METH_NOARGS, "Drop what is queued (counted as dropped)."},
    {"close", (PyCFunction)batch_close, METH_NOARGS,
     "Drop what is queued and release the duplicated descriptor; idempotent."},
    {NULL, NULL, 0, NULL},
};

static PyObject *
batch_get_gso(BatchObject *self, void *closure)
{
    return PyBool_FromLong(self->gso);
}

static PyObject *
batch_get_fd(BatchObject *self, void *closure)
{
    return PyLong_FromLong(self->fd);
}

static PyGetSetDef batch_getset[] = {
    {"gso", (getter)batch_get_gso, NULL, "Whether equal-size runs go out as one GSO message.", NULL},
    {"fd", (getter)batch_get_fd, NULL, "The duplicated socket descriptor (-1: none).", NULL},
    {NULL},
};

static PyMemberDef batch_members[] = {
    {"sent", T_ULONGLONG, offsetof(BatchObject, sent), READONLY, "datagrams sent"},
    {"dropped", T_ULONGLONG, offsetof(BatchObject, dropped), READONLY, "datagrams dropped"},
    {"syscalls", T_ULONGLONG, offsetof(BatchObject, syscalls), READONLY, "sendmmsg calls"},
    {"flushes", T_ULONGLONG, offsetof(BatchObject, flushes), READONLY, "non-empty flushes"},
    {"gso_datagrams", T_ULONGLONG, offsetof(BatchObject, gso_datagrams), READONLY,
     "datagrams sent inside GSO messages"},
    {"auto_flushes", T_ULONGLONG, offsetof(BatchObject, auto_flushes), READONLY,
     "flushes forced by a full batch"},
    {"fanout_flushes", T_ULONGLONG, offsetof(BatchObject, fanout_flushes), READONLY,
     "flushes the compiled receive path made in the middle of a fan-out (`forward_many`)"},
    {"fanout_datagrams", T_ULONGLONG, offsetof(BatchObject, fanout_datagrams), READONLY,
     "the datagrams those flushes held"},
    {"capacity", T_PYSSIZET, offsetof(BatchObject, capacity), READONLY,
     "datagrams it holds; a full batch is sent before the next is queued"},
    {NULL},
};

static PySequenceMethods batch_as_sequence = {.sq_length = (lenfunc)batch_len};

/* ---------------------------------------------------------------- TransportWideSequence */

#define TWCC_HISTORY 2048 /* fastpath_py.TWCC_HISTORY */
#define TWCC_MASK (TWCC_HISTORY - 1)

typedef struct {
    PyObject_HEAD
    uint32_t ext_id; /* the negotiated extmap id (1..14); 0: no stamp */
    int64_t next_seq;
    int64_t seq[TWCC_HISTORY];
    double time[TWCC_HISTORY];
    uint32_t size[TWCC_HISTORY];
} SequenceObject;

static PyTypeObject SequenceType;

static int
sequence_init(SequenceObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"ext_id", NULL};
    unsigned int ext_id = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "|I", kwlist, &ext_id))
        return -1;
    if (ext_id > 14) {
        PyErr_SetString(PyExc_ValueError, "ext_id out of range");
        return -1;
    }
    self->ext_id = ext_id;
    self->next_seq = 0;
    for (int i = 0; i < TWCC_HISTORY; i++)
        self->seq[i] = -1;
    return 0;
}

static inline void
sequence_record(SequenceObject *q, Py_ssize_t size, double now)
{
    int slot = (int)(q->next_seq & TWCC_MASK);
    q->seq[slot] = q->next_seq;
    q->time[slot] = now;
    q->size[slot] = (uint32_t)size;
    if (q->next_seq < SEQ_LIMIT - 1)
        q->next_seq++;
}

static PyObject *
sequence_record_py(SequenceObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "record() takes 2 arguments");
        return NULL;
    }
    Py_ssize_t size = PyLong_AsSsize_t(args[0]);
    if (size == -1 && PyErr_Occurred())
        return NULL;
    double now = PyFloat_AsDouble(args[1]);
    if (now == -1.0 && PyErr_Occurred())
        return NULL;
    if (size < 0 || size > 0xFFFF) {
        PyErr_SetString(PyExc_ValueError, "size out of range");
        return NULL;
    }
    long long seq = self->next_seq;
    sequence_record(self, size, now);
    return PyLong_FromLongLong(seq);
}

static PyObject *
sequence_sent(SequenceObject *self, PyObject *arg)
{
    long long seq = PyLong_AsLongLong(arg);
    if (seq == -1 && PyErr_Occurred()) {
        if (!PyErr_ExceptionMatches(PyExc_OverflowError))
            return NULL;
        PyErr_Clear();
        Py_RETURN_NONE;
    }
    if (seq < 0)
        Py_RETURN_NONE;
    int slot = (int)(seq & TWCC_MASK);
    if (self->seq[slot] != seq)
        Py_RETURN_NONE;
    return Py_BuildValue("(dk)", self->time[slot], (unsigned long)self->size[slot]);
}

static PyObject *
sequence_get_ext_id(SequenceObject *self, void *c)
{
    return PyLong_FromUnsignedLong(self->ext_id);
}

static int
sequence_set_ext_id(SequenceObject *self, PyObject *v, void *c)
{
    if (v == NULL) {
        PyErr_SetString(PyExc_AttributeError, "cannot delete ext_id");
        return -1;
    }
    unsigned long x = PyLong_AsUnsignedLong(v);
    if (x == (unsigned long)-1 && PyErr_Occurred())
        return -1;
    if (x > 14) {
        PyErr_SetString(PyExc_ValueError, "ext_id out of range");
        return -1;
    }
    self->ext_id = (uint32_t)x;
    return 0;
}

static PyObject *
sequence_get_next_seq(SequenceObject *self, void *c)
{
    return PyLong_FromLongLong(self->next_seq);
}

static int
sequence_set_next_seq(SequenceObject *self, PyObject *v, void *c)
{
    if (v == NULL) {
        PyErr_SetString(PyExc_AttributeError, "cannot delete next_seq");
        return -1;
    }
    long long x = PyLong_AsLongLong(v);
    if (x == -1 && PyErr_Occurred())
        return -1;
    if (x < 0 || x >= SEQ_LIMIT) {
        PyErr_SetString(PyExc_ValueError, "next_seq out of range");
        return -1;
    }
    self->next_seq = x;
    return 0;
}

static PyMethodDef sequence_methods[] = {
    {"record", (PyCFunction)(void (*)(void))sequence_record_py, METH_FASTCALL,
     "record(size, now): the datagram stamped with next_seq left; returns the number it got."},
    {"sent", (PyCFunction)sequence_sent, METH_O,
     "sent(seq): (send time, size) of extended number seq, or None when unknown."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef sequence_getset[] = {
    {"ext_id", (getter)sequence_get_ext_id, (setter)sequence_set_ext_id,
     "the transport-cc extmap id (1..14); 0: copies are not stamped", NULL},
    {"next_seq", (getter)sequence_get_next_seq, (setter)sequence_set_next_seq,
     "the extended transport-wide sequence number the next datagram gets", NULL},
    {NULL},
};

/* ----------------------------------------------------------------------------------- Target */

typedef struct {
    PyObject_HEAD
    /* parameters, set from Python when they change */
    uint32_t ssrc;
    uint32_t ts_offset;
    int64_t seq_offset;
    int64_t switch_seq;
    int64_t epoch;
    uint32_t payload_type;
    uint32_t pid_offset;
    uint32_t tl0_offset;
    uint32_t keyidx_offset;
    BatchObject *batch;
    struct sockaddr_storage addr;
    socklen_t addrlen;
    void *srtp;
    PyObject *srtp_owner;
    SequenceObject *twcc; /* the transport's sequence (stamped when its ext_id is set) or NULL */
    PyObject *weakreflist;
    char closed; /* its transport closed: nothing more is built, queued or counted */
    /* state that forward updates */
    int sent_any;
    int64_t last_out_seq;
    uint32_t last_out_ts;
    double last_out_time;
    PyObject *last_packet;
    unsigned long long packets_sent, octets_sent, send_dropped;
    /* NACK history, indexed by outgoing sequence number */
    int64_t h_seq[HISTORY_SIZE];
    int64_t h_epoch[HISTORY_SIZE];
    uint32_t h_ts[HISTORY_SIZE];
    uint16_t h_offset[HISTORY_SIZE]; /* payload offset and padding of the received packet */
    uint8_t h_padding[HISTORY_SIZE];
    PyObject *h_data[HISTORY_SIZE];
} TargetObject;

static PyTypeObject TargetType;
static int target_ready(const TargetObject *t);


static int
target_init(TargetObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"batch", "addr", "srtp", "owner", NULL};
    PyObject *batch, *addr, *owner = Py_None;
    unsigned long long srtp = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O!O|$KO", kwlist, &BatchType, &batch, &addr,
                                     &srtp, &owner))
        return -1;
    if (self->batch != NULL) {
        PyErr_SetString(PyExc_RuntimeError, "Target already initialised");
        return -1;
    }
    if (parse_addr(addr, &self->addr, &self->addrlen) < 0)
        return -1;
    if (srtp && srtp_protect_fn == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "set_srtp() was not called");
        return -1;
    }
    Py_INCREF(batch);
    self->batch = (BatchObject *)batch;
    self->srtp = (void *)(uintptr_t)srtp;
    Py_INCREF(owner);
    self->srtp_owner = owner;
    return 0;
}

static void
target_clear_history(TargetObject *self)
{
    for (int i = 0; i < HISTORY_SIZE; i++)
        Py_CLEAR(self->h_data[i]);
}

static void
target_dealloc(TargetObject *self)
{
    if (self->weakreflist != NULL)
        PyObject_ClearWeakRefs((PyObject *)self);
    target_clear_history(self);
    Py_CLEAR(self->last_packet);
    Py_CLEAR(self->batch);
    Py_CLEAR(self->srtp_owner);
    Py_CLEAR(self->twcc);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* One datagram into the batch: protect in the slot, then count it queued. */
static int
target_queue(TargetObject *t, Slot *s, int len, int rtcp)
{
    if (t->srtp != NULL) {
        int n = len;
        srtp_fn fn = rtcp ? srtp_protect_rtcp_fn : srtp_protect_fn;
        if (fn == NULL || fn(t->srtp, s->data, &n) != 0 || n < len || n > SLOT_SIZE) {
            t->send_dropped++;
            return 0;
        }
        len = n;
    }
    s->len = len;
    memcpy(&s->addr, &t->addr, t->addrlen);
    s->addrlen = t->addrlen;
    t->batch->count++;
    return 1;
}

static PyObject *
target_send(TargetObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"data", "rtcp", NULL};
    Py_buffer data;
    int rtcp = 0;
    if (target_ready(self) < 0 ||
        !PyArg_ParseTupleAndKeywords(args, kwds, "y*|$p", kwlist, &data, &rtcp))
        return NULL;
    int limit = SLOT_SIZE - (rtcp ? SRTCP_TRAILER : SRTP_TRAILER);
    if (data.len > limit || data.len < 1 || self->closed) {
        PyBuffer_Release(&data);
        self->send_dropped++;
        Py_RETURN_FALSE;
    }
    Slot *s = batch_slot(self->batch);
    if (s == NULL) {
        PyBuffer_Release(&data);
        return NULL;
    }
    memcpy(s->data, data.buf, (size_t)data.len);
    int ok = target_queue(self, s, (int)data.len, rtcp);
    PyBuffer_Release(&data);
    return PyBool_FromLong(ok);
}

static PyObject *
target_entry(TargetObject *self, PyObject *arg)
{
    long slot = PyLong_AsLong(arg);
    if (slot == -1 && PyErr_Occurred())
        return NULL;
    if (slot < 0 || slot >= HISTORY_SIZE) {
        PyErr_SetString(PyExc_IndexError, "history slot out of range");
        return NULL;
    }
    if (self->h_data[slot] == NULL)
        Py_RETURN_NONE;
    return Py_BuildValue("(LkOL)", (long long)self->h_seq[slot], (unsigned long)self->h_ts[slot],
                         self->h_data[slot], (long long)self->h_epoch[slot]);
}

static PyObject *
target_clear_history_py(TargetObject *self, PyObject *Py_UNUSED(ignored))
{
    target_clear_history(self);
    Py_RETURN_NONE;
}

static PyObject *target_resend(TargetObject *self, PyObject *const *args, Py_ssize_t nargs);

static PyMethodDef target_methods[] = {
    {"resend", (PyCFunction)(void (*)(void))target_resend, METH_FASTCALL,
     "resend(slot, now=0.0): rebuild history slot `slot` under its stored sequence number and\n"
     "timestamp (current SSRC, payload type and VP8 offsets; stamped, recorded at `now`),\n"
     "protect and queue it; False if empty or dropped."},
    {"entry", (PyCFunction)target_entry, METH_O,
     "History slot `slot`: (out_seq, out_ts, received bytes, epoch), or None."},
    {"clear_history", (PyCFunction)target_clear_history_py, METH_NOARGS, "Empty the history."},
    {"send", (PyCFunction)(void (*)(void))target_send, METH_VARARGS | METH_KEYWORDS,
     "Protect one plaintext RTP (or RTCP) datagram and queue it; False if dropped."},
    {NULL, NULL, 0, NULL},
};

/* validated integer attributes */
#define UINT_FIELD(name, max)                                                                  \
    static PyObject *target_get_##name(TargetObject *self, void *c)                             \
    {                                                                                           \
        return PyLong_FromUnsignedLong(self->name);                                             \
    }                                                                                           \
    static int target_set_##name(TargetObject *self, PyObject *v, void *c)                      \
    {                                                                                           \
        if (v == NULL) {                                                                        \
            PyErr_SetString(PyExc_AttributeError, "cannot delete " #name);                      \
            return -1;                                                                          \
        }                                                                                       \
        unsigned long x = PyLong_AsUnsignedLong(v);                                             \
        if (x == (unsigned long)-1 && PyErr_Occurred())                                         \
            return -1;                                                                          \
        if (x > (max)) {                                                                        \
            PyErr_SetString(PyExc_ValueError, #name " out of range");                           \
            return -1;                                                                          \
        }                                                                                       \
        self->name = (uint32_t)x;                                                               \
        return 0;                                                                               \
    }
#define INT64_FIELD(name)                                                                      \
    static PyObject *target_get_##name(TargetObject *self, void *c)                             \
    {                                                                                           \
        return PyLong_FromLongLong(self->name);                                                 \
    }                                                                                           \
    static int target_set_##name(TargetObject *self, PyObject *v, void *c)                      \
    {                                                                                           \
        if (v == NULL) {                                                                        \
            PyErr_SetString(PyExc_AttributeError, "cannot delete " #name);                      \
            return -1;                                                                          \
        }                                                                                       \
        long long x = PyLong_AsLongLong(v);                                                     \
        if (x == -1 && PyErr_Occurred())                                                        \
            return -1;                                                                          \
        if (x <= -SEQ_LIMIT || x >= SEQ_LIMIT) {                                                \
            PyErr_SetString(PyExc_ValueError, #name " out of range");                           \
            return -1;                                                                          \
        }                                                                                       \
        self->name = x;                                                                         \
        return 0;                                                                               \
    }

UINT_FIELD(ssrc, 0xFFFFFFFFUL)
UINT_FIELD(ts_offset, 0xFFFFFFFFUL)
UINT_FIELD(payload_type, 0x7FUL)
UINT_FIELD(pid_offset, 0x7FFFUL)
UINT_FIELD(tl0_offset, 0xFFUL)
UINT_FIELD(keyidx_offset, 0x1FUL)
UINT_FIELD(last_out_ts, 0xFFFFFFFFUL)
INT64_FIELD(seq_offset)
INT64_FIELD(switch_seq)
INT64_FIELD(epoch)
INT64_FIELD(last_out_seq)

static PyObject *
target_get_sent_any(TargetObject *self, void *c)
{
    return PyBool_FromLong(self->sent_any);
}

static int
target_set_sent_any(TargetObject *self, PyObject *v, void *c)
{
    int x = v ? PyObject_IsTrue(v) : -1;
    if (x < 0) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_AttributeError, "cannot delete sent_any");
        return -1;
    }
    self->sent_any = x;
    return 0;
}

static PyObject *
target_get_last_packet(TargetObject *self, void *c)
{
    PyObject *p = self->last_packet ? self->last_packet : Py_None;
    Py_INCREF(p);
    return p;
}

static int
target_set_last_packet(TargetObject *self, PyObject *v, void *c)
{
    PyObject *old = self->last_packet;
    self->last_packet = (v == NULL || v == Py_None) ? NULL : Py_NewRef(v);
    Py_XDECREF(old);
    return 0;
}

static PyObject *
target_get_addr(TargetObject *self, void *c)
{
    return addr_to_tuple(&self->addr);
}

static int
target_set_addr(TargetObject *self, PyObject *v, void *c)
{
    if (v == NULL) {
        PyErr_SetString(PyExc_AttributeError, "cannot delete addr");
        return -1;
    }
    return parse_addr(v, &self->addr, &self->addrlen);
}

static PyObject *
target_get_twcc(TargetObject *self, void *c)
{
    return Py_NewRef(self->twcc ? (PyObject *)self->twcc : Py_None);
}

static int
target_set_twcc(TargetObject *self, PyObject *v, void *c)
{
    if (v != NULL && v != Py_None && Py_TYPE(v) != &SequenceType) {
        PyErr_SetString(PyExc_TypeError, "twcc must be a TransportWideSequence or None");
        return -1;
    }
    SequenceObject *old = self->twcc;
    self->twcc = (v == NULL || v == Py_None) ? NULL : (SequenceObject *)Py_NewRef(v);
    Py_XDECREF(old);
    return 0;
}

static PyObject *
target_get_batch(TargetObject *self, void *c)
{
    return Py_NewRef(self->batch ? (PyObject *)self->batch : Py_None);
}

/* 0, or -1 with TypeError for a Target whose __init__ never ran */
static int
target_ready(const TargetObject *t)
{
    if (t->batch != NULL)
        return 0;
    PyErr_SetString(PyExc_TypeError, "Target.__init__ was not called");
    return -1;
}

#define GS(name, doc) {#name, (getter)target_get_##name, (setter)target_set_##name, doc, NULL}
static PyGetSetDef target_getset[] = {
    GS(ssrc, "outgoing SSRC"),
    GS(payload_type, "outgoing payload type (0..127)"),
    GS(ts_offset, "out timestamp = (in - ts_offset) mod 2**32"),
    GS(seq_offset, "out sequence number = extended in - seq_offset"),
    GS(switch_seq, "packets with an extended sequence number below this are not forwarded"),
    GS(epoch, "stored with each history entry (counts switches)"),
    GS(pid_offset, "VP8 PictureID offset (mod 2**15)"),
    GS(tl0_offset, "VP8 TL0PICIDX offset (mod 2**8)"),
    GS(keyidx_offset, "VP8 KEYIDX offset (mod 2**5)"),
    GS(sent_any, "whether last_out_* hold a sent packet's values"),
    GS(last_out_seq, "extended outgoing sequence number of the newest packet sent"),
    GS(last_out_ts, "outgoing timestamp of the newest packet sent"),
    GS(last_packet, "the newest media (not padding-only) packet object forwarded"),
    GS(addr, "the destination (host, port)"),
    GS(twcc, "the transport's TransportWideSequence (copies stamped when its ext_id is set)"),
    {"batch", (getter)target_get_batch, NULL, "the send batch", NULL},
    {NULL},
};

static PyMemberDef target_members[] = {
    {"last_out_time", T_DOUBLE, offsetof(TargetObject, last_out_time), 0,
     "`now` of the newest packet sent"},
    {"packets_sent", T_ULONGLONG, offsetof(TargetObject, packets_sent), 0, "RTP packets written"},
    {"octets_sent", T_ULONGLONG, offsetof(TargetObject, octets_sent), 0,
     "payload octets written (datagram length - 12, RFC 3550 SR)"},
    {"send_dropped", T_ULONGLONG, offsetof(TargetObject, send_dropped), 0,
     "datagrams SRTP refused or too long to protect"},
    {"closed", T_BOOL, offsetof(TargetObject, closed), 0,
     "its transport closed: forward skips it, resend and send refuse (the batch may be shared)"},
    {NULL},
};

/* ----------------------------------------------------------------------------------- forward */

typedef struct {
    int state; /* 0: not parsed yet, 1: parsed, -1: no valid descriptor */
    Py_ssize_t size;
    int x, i, l, t, k, wide, sync;
    uint8_t b0;
    uint32_t pid, tl0, tid, kidx;
} Vp8;

/* RFC 7741 §4.2, as sfu.media.rtp.vp8.Vp8PayloadDescriptor.parse reads it */
static void
vp8_parse(Vp8 *d, const uint8_t *p, Py_ssize_t n)
{
    d->state = -1;
    if (n < 1)
        return;
    d->b0 = p[0];
    d->x = d->i = d->l = d->t = d->k = d->wide = d->sync = 0;
    Py_ssize_t i = 1;
    if (p[0] & 0x80) {
        if (i >= n)
            return;
        uint8_t xb = p[i++];
        d->x = 1;
        if (xb & 0x80) {
            if (i >= n)
                return;
            d->i = 1;
            if (p[i] & 0x80) {
                if (i + 1 >= n)
                    return;
                d->pid = (uint32_t)(p[i] & 0x7F) << 8 | p[i + 1];
                d->wide = 1;
                i += 2;
            } else {
                d->pid = p[i];
                i += 1;
            }
        }
        if (xb & 0x40) {
            if (i >= n)
                return;
            d->l = 1;
            d->tl0 = p[i++];
        }
        if (xb & 0x30) {
            if (i >= n)
                return;
            uint8_t tk = p[i++];
            if (xb & 0x20) {
                d->t = 1;
                d->tid = tk >> 6;
                d->sync = (tk & 0x20) != 0;
            }
            if (xb & 0x10) {
                d->k = 1;
                d->kidx = tk & 0x1F;
            }
        }
    }
    d->size = i;
    d->state = 1;
}

/* sfu.media.rtp.vp8.munged_descriptor with the offsets applied; returns the length (≤ 7) */
static int
vp8_munge(const Vp8 *d, const TargetObject *t, uint8_t *out)
{
    uint8_t b0 = d->b0 & 0x37;
    if (!d->x) {
        out[0] = b0;
        return 1;
    }
    uint8_t xb = 0;
    int n = 2;
    if (d->i) {
        uint32_t pid = (d->pid - t->pid_offset) & 0x7FFF;
        xb |= 0x80;
        if (d->wide || pid > 0x7F) {
            out[n++] = (uint8_t)(0x80 | pid >> 8);
            out[n++] = (uint8_t)(pid & 0xFF);
        } else {
            out[n++] = (uint8_t)pid;
        }
    }
    if (d->l) {
        xb |= 0x40;
        out[n++] = (uint8_t)((d->tl0 - t->tl0_offset) & 0xFF);
    }
    if (d->t || d->k) {
        uint8_t tk = 0;
        if (d->t) {
            xb |= 0x20;
            tk = (uint8_t)(d->tid << 6 | (d->sync ? 0x20 : 0));
        }
        if (d->k) {
            xb |= 0x10;
            tk |= (uint8_t)((d->kidx - t->keyidx_offset) & 0x1F);
        }
        out[n++] = tk;
    }
    out[0] = b0 | 0x80;
    out[1] = xb;
    return n;
}

static inline void
put16(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 8);
    p[1] = (uint8_t)v;
}

static inline void
put32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

/* the sequence `t`'s copies are stamped from, or NULL */
static inline SequenceObject *
stamping(const TargetObject *t)
{
    return t->twcc != NULL && t->twcc->ext_id ? t->twcc : NULL;
}

/* target_queue, and the transport-wide sequence number the datagram carries recorded */
static int
target_queue_stamped(TargetObject *t, Slot *s, int len, double now)
{
    SequenceObject *tw = stamping(t);
    if (!target_queue(t, s, len, 0))
        return 0;
    if (tw)
        sequence_record(tw, len, now);
    return 1;
}

typedef struct {
    PyObject *packet, *data;
    const uint8_t *p;
    Py_ssize_t len, payload_offset, padding;
    int64_t ext_seq;
    double now;
    int padding_only;
    uint32_t ts;
    Vp8 vp8; /* parsed on first need */
} Packet;

/* The datagram for target `t` of the received packet `pk` under out_seq/out_ts, into `b` (a
 * slot); returns its length, which is written only when it fits the protect buffer. */
static Py_ssize_t
build_copy(const TargetObject *t, Packet *pk, int64_t out_seq, uint32_t out_ts, uint8_t *b)
{
    Py_ssize_t size;
    const SequenceObject *tw = stamping(t);
    int hl = tw ? 20 : 12; /* the header, with the transport-cc extension block when stamped */
    uint8_t x = tw ? 0x10 : 0;
    if (pk->padding_only) {
        /* a bandwidth probe: keep its sequence number, not its bytes */
        b[0] = (uint8_t)(0xA0 | x);
        b[hl] = 1;
        size = hl + 1;
    } else {
        const uint8_t *rest = pk->p + pk->payload_offset;
        Py_ssize_t rest_len = pk->len - pk->payload_offset;
        uint8_t desc[8];
        int desc_len = 0;
        if (t->pid_offset || t->tl0_offset || t->keyidx_offset) {
            Vp8 *d = &pk->vp8;
            if (d->state == 0)
                vp8_parse(d, rest, rest_len - pk->padding);
            if (d->state == 1) {
                desc_len = vp8_munge(d, t, desc);
                rest += d->size;
                rest_len -= d->size;
            }
        }
        size = hl + desc_len + rest_len;
        if (size > SLOT_SIZE - SRTP_TRAILER)
            return size;
        b[0] = (uint8_t)(0x80 | (pk->p[0] & 0x20) | x); /* V=2, P kept, no CSRC */
        memcpy(b + hl, desc, (size_t)desc_len);
        memcpy(b + hl + desc_len, rest, (size_t)rest_len);
    }
    b[1] = (uint8_t)((pk->p[1] & 0x80) | t->payload_type);
    put16(b + 2, (uint32_t)out_seq & 0xFFFF);
    put32(b + 4, out_ts);
    put32(b + 8, t->ssrc);
    if (tw) { /* RFC 8285 one-byte form: one element, padded to a word */
        b[12] = 0xBE;
        b[13] = 0xDE;
        b[14] = 0;
        b[15] = 1;
        b[16] = (uint8_t)(tw->ext_id << 4 | 1);
        put16(b + 17, (uint32_t)tw->next_seq & 0xFFFF);
        b[19] = 0;
    }
    return size;
}

/* One copy of `pk` for target `t`; -1 with an exception set only when memory runs out. */
static int
forward_one(TargetObject *t, Packet *pk, Py_ssize_t *copies, Py_ssize_t *octets)
{
    if (pk->ext_seq < t->switch_seq || t->closed)
        return 0; /* older than the packet the target switched on, or its transport closed */
    int64_t out_seq = pk->ext_seq - t->seq_offset; /* both within ±2**62: no overflow */
    uint32_t out_ts = pk->ts - t->ts_offset;
    int newest = !t->sent_any || out_seq > t->last_out_seq;
    Slot *s = batch_slot(t->batch);
    if (s == NULL)
        return -1;
    Py_ssize_t size = build_copy(t, pk, out_seq, out_ts, s->data);
    PyObject *old_packet = NULL;
    if (newest) {
        if (!pk->padding_only) {
            old_packet = t->last_packet;
            t->last_packet = Py_NewRef(pk->packet);
        }
        t->sent_any = 1;
        t->last_out_seq = out_seq;
        t->last_out_ts = out_ts;
        t->last_out_time = pk->now;
    }
    int slot = (int)(out_seq & HISTORY_MASK);
    PyObject *old_data = t->h_data[slot];
    t->h_data[slot] = Py_NewRef(pk->data);
    t->h_seq[slot] = out_seq;
    t->h_ts[slot] = out_ts;
    t->h_epoch[slot] = t->epoch;
    t->h_offset[slot] = (uint16_t)pk->payload_offset;
    t->h_padding[slot] = (uint8_t)pk->padding;
    t->packets_sent++;
    t->octets_sent += (unsigned long long)(size - (stamping(t) ? 20 : 12));
    *copies += 1;
    *octets += size;
    if (size <= SLOT_SIZE - SRTP_TRAILER)
        target_queue_stamped(t, s, (int)size, pk->now);
    else
        t->send_dropped++; /* too long to protect: written (history, counters), not sent */
    /* last: a destructor run here may use the batch (the slot is queued by now) */
    Py_XDECREF(old_packet);
    Py_XDECREF(old_data);
    return 0;
}

static PyObject *
target_resend(TargetObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs < 1 || nargs > 2) {
        PyErr_SetString(PyExc_TypeError, "resend() takes 1 or 2 arguments");
        return NULL;
    }
    long slot = PyLong_AsLong(args[0]);
    if (slot == -1 && PyErr_Occurred())
        return NULL;
    double now = 0.0;
    if (nargs == 2) {
        now = PyFloat_AsDouble(args[1]);
        if (now == -1.0 && PyErr_Occurred())
            return NULL;
    }
    if (slot < 0 || slot >= HISTORY_SIZE) {
        PyErr_SetString(PyExc_IndexError, "history slot out of range");
        return NULL;
    }
    PyObject *data = self->h_data[slot];
    if (data == NULL)
        Py_RETURN_FALSE;
    if (target_ready(self) < 0)
        return NULL;
    if (self->closed) {
        self->send_dropped++;
        Py_RETURN_FALSE;
    }
    Packet pk = {
        .data = data,
        .p = (const uint8_t *)PyBytes_AS_STRING(data),
        .len = PyBytes_GET_SIZE(data),
        .payload_offset = self->h_offset[slot],
        .padding = self->h_padding[slot],
    };
    pk.padding_only = pk.payload_offset + pk.padding >= pk.len;
    Slot *s = batch_slot(self->batch);
    if (s == NULL)
        return NULL;
    Py_ssize_t size = build_copy(self, &pk, self->h_seq[slot], self->h_ts[slot], s->data);
    if (size > SLOT_SIZE - SRTP_TRAILER) {
        self->send_dropped++;
        Py_RETURN_FALSE;
    }
    return PyBool_FromLong(target_queue_stamped(self, s, (int)size, now));
}

/* `pk` for one received packet, checked as `forward` checks its arguments: `data` exact bytes;
 * 0, or -1 with an exception set. */
static int
packet_init(Packet *pk, PyObject *packet, PyObject *data, int64_t ext_seq,
            Py_ssize_t payload_offset, Py_ssize_t padding, double now)
{
    const uint8_t *p = (const uint8_t *)PyBytes_AS_STRING(data);
    Py_ssize_t len = PyBytes_GET_SIZE(data);
    if (len < 12 || len > 0xFFFF || payload_offset < 12 || payload_offset > len || padding < 0 ||
        padding > 255 || padding > len - payload_offset) {
        PyErr_SetString(PyExc_ValueError, "payload_offset/padding_size do not fit the packet");
        return -1;
    }
    if (ext_seq < 0 || ext_seq >= SEQ_LIMIT) {
        PyErr_SetString(PyExc_ValueError, "ext_seq out of range");
        return -1;
    }
    *pk = (Packet){
        .packet = packet,
        .data = data,
        .p = p,
        .len = len,
        .payload_offset = payload_offset,
        .padding = padding,
        .ext_seq = ext_seq,
        .now = now,
        .padding_only = payload_offset + padding >= len,
        .ts = (uint32_t)p[4] << 24 | (uint32_t)p[5] << 16 | (uint32_t)p[6] << 8 | p[7],
    };
    return 0;
}

/* The target at `targets[ti]`, checked and held; NULL with an exception set. */
static TargetObject *
target_at(PyObject *targets, Py_ssize_t ti)
{
    PyObject *item = PySequence_Fast_ITEMS(targets)[ti];
    if (Py_TYPE(item) != &TargetType) {
        PyErr_SetString(PyExc_TypeError, "targets must hold Target objects");
        return NULL;
    }
    if (target_ready((TargetObject *)item) < 0)
        return NULL;
    return (TargetObject *)Py_NewRef(item);
}

/* FastpathApi.forward_many (sfu/media/_fastpath_api.h): the packets of one stream, target by
 * target, each target's batch sent once it holds `flush_at` datagrams after a target's run. */
static int
forward_many(PyObject *targets, const FastpathPacket *packets, Py_ssize_t count,
             Py_ssize_t flush_at, Py_ssize_t *copies_out, Py_ssize_t *octets_out)
{
    if (count < 0 || count > FASTPATH_MAX_MANY) {
        PyErr_SetString(PyExc_ValueError, "forward_many: too many packets");
        return -1;
    }
    Packet pks[FASTPATH_MAX_MANY];
    for (Py_ssize_t i = 0; i < count; i++) {
        const FastpathPacket *f = &packets[i];
        if (packet_init(&pks[i], f->packet, f->data, f->ext_seq, f->payload_offset, f->padding,
                        f->now) < 0)
            return -1;
    }
    Py_ssize_t copies = 0, octets = 0;
    /* The size is read again each round and each target held while in use: a __del__ run by
     * a DECREF below could change a list. */
    for (Py_ssize_t ti = 0; ti < Py_SIZE(targets); ti++) {
        TargetObject *t = target_at(targets, ti);
        if (t == NULL)
            return -1;
        int rc = 0;
        for (Py_ssize_t i = 0; i < count && rc == 0; i++)
            rc = forward_one(t, &pks[i], &copies, &octets);
        BatchObject *batch = t->batch;
        if (rc == 0 && flush_at > 0 && batch->count >= flush_at) {
            batch->fanout_flushes++;
            batch->fanout_datagrams += (unsigned long long)batch->count;
            batch_send(batch);
        }
        Py_DECREF(t);
        if (rc < 0)
            return -1;
    }
    *copies_out = copies;
    *octets_out = octets;
    return 0;
}

/* `forward` without the Python argument parsing: `forward_many` of one packet, no flush. `data`
 * is exact bytes and `targets` a list or tuple; 0, or -1 with an exception set. */
static int
forward_packet(PyObject *targets, PyObject *packet, PyObject *data, int64_t ext_seq,
               Py_ssize_t payload_offset, Py_ssize_t padding, double now, Py_ssize_t *copies_out,
               Py_ssize_t *octets_out)
{
    FastpathPacket one = {.packet = packet, .data = data, .ext_seq = ext_seq,
                          .payload_offset = payload_offset, .padding = padding, .now = now};
    return forward_many(targets, &one, 1, 0, copies_out, octets_out);
}

PyDoc_STRVAR(forward_doc,
"forward(targets, packet, data, ext_seq, payload_offset, padding_size, now) -> (copies, octets)\n\n"
"Forward one received RTP packet (`data`, parsed as `packet`) to every Target in `targets` (a\n"
"list or tuple). Per target: skip it when ext_seq < switch_seq; rewrite the header; store the\n"
"history slot; update last_out_*/last_packet when it is the newest; protect and queue.\n"
"Returns the copies written and the sum of their plaintext lengths.");

static PyObject *
fastpath_forward(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 7) {
        PyErr_SetString(PyExc_TypeError, "forward() takes 7 arguments");
        return NULL;
    }
    PyObject *targets = args[0], *packet = args[1], *data = args[2];
    if (!PyList_Check(targets) && !PyTuple_Check(targets)) {
        PyErr_SetString(PyExc_TypeError, "targets must be a list or tuple");
        return NULL;
    }
    if (!PyBytes_CheckExact(data)) {
        PyErr_SetString(PyExc_TypeError, "data must be bytes");
        return NULL;
    }
    long long ext_seq = PyLong_AsLongLong(args[3]);
    if (ext_seq == -1 && PyErr_Occurred())
        return NULL;
    Py_ssize_t payload_offset = PyLong_AsSsize_t(args[4]);
    if (payload_offset == -1 && PyErr_Occurred())
        return NULL;
    Py_ssize_t padding = PyLong_AsSsize_t(args[5]);
    if (padding == -1 && PyErr_Occurred())
        return NULL;
    double now = PyFloat_AsDouble(args[6]);
    if (now == -1.0 && PyErr_Occurred())
        return NULL;
    Py_ssize_t copies = 0, octets = 0;
    if (forward_packet(targets, packet, data, ext_seq, payload_offset, padding, now, &copies,
                       &octets) < 0)
        return NULL;
    return Py_BuildValue("(nn)", copies, octets);
}

static PyObject *
fastpath_set_srtp(PyObject *module, PyObject *args)
{
    unsigned long long protect, protect_rtcp;
    if (!PyArg_ParseTuple(args, "KK", &protect, &protect_rtcp))
        return NULL;
    if (!protect || !protect_rtcp) {
        PyErr_SetString(PyExc_ValueError, "null function pointer");
        return NULL;
    }
    srtp_protect_fn = (srtp_fn)(uintptr_t)protect;
    srtp_protect_rtcp_fn = (srtp_fn)(uintptr_t)protect_rtcp;
    Py_RETURN_NONE;
}

static PyMethodDef module_methods[] = {
    {"forward", (PyCFunction)(void (*)(void))fastpath_forward, METH_FASTCALL, forward_doc},
    {"set_srtp", fastpath_set_srtp, METH_VARARGS,
     "set_srtp(protect, protect_rtcp): the addresses of libsrtp's srtp_protect and "
     "srtp_protect_rtcp (as ints), called for every target with an SRTP context."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject BatchType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "sfu.media._fastpath.Batch",
    .tp_basicsize = sizeof(BatchObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Batch(fd, *, gso=False, capacity=1024): datagrams queued for one socket.",
    .tp_new = batch_new,
    .tp_init = (initproc)batch_init,
    .tp_dealloc = (destructor)batch_dealloc,
    .tp_methods = batch_methods,
    .tp_members = batch_members,
    .tp_getset = batch_getset,
    .tp_as_sequence = &batch_as_sequence,
};

static PyTypeObject SequenceType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "sfu.media._fastpath.TransportWideSequence",
    .tp_basicsize = sizeof(SequenceObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "TransportWideSequence(ext_id=0): one transport's transport-wide sequence numbers\n"
              "and the send time and size of what went out under each.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)sequence_init,
    .tp_methods = sequence_methods,
    .tp_getset = sequence_getset,
};

static PyTypeObject TargetType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "sfu.media._fastpath.Target",
    .tp_basicsize = sizeof(TargetObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Target(batch, addr, *, srtp=0, owner=None): one down track's per-copy state.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)target_init,
    .tp_dealloc = (destructor)target_dealloc,
    .tp_weaklistoffset = offsetof(TargetObject, weakreflist),
    .tp_methods = target_methods,
    .tp_members = target_members,
    .tp_getset = target_getset,
};

static FastpathApi c_api = {.forward_many = forward_many, .target_type = &TargetType};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT, "sfu.media._fastpath",
    "The compiled per-copy forwarding path (see sfu/media/_fastpath.c).", -1, module_methods,
};

PyMODINIT_FUNC
PyInit__fastpath(void)
{
    if (PyType_Ready(&BatchType) < 0 || PyType_Ready(&TargetType) < 0 ||
        PyType_Ready(&SequenceType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module_def);
    if (m == NULL)
        return NULL;
    if (PyModule_AddObjectRef(m, "Batch", (PyObject *)&BatchType) < 0 ||
        PyModule_AddObjectRef(m, "Target", (PyObject *)&TargetType) < 0 ||
        PyModule_AddObjectRef(m, "TransportWideSequence", (PyObject *)&SequenceType) < 0 ||
        PyModule_AddIntConstant(m, "TWCC_HISTORY", TWCC_HISTORY) < 0 ||
        PyModule_AddIntConstant(m, "HISTORY_SIZE", HISTORY_SIZE) < 0 ||
        PyModule_AddIntConstant(m, "SLOT_SIZE", SLOT_SIZE) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    PyObject *capsule = PyCapsule_New(&c_api, FASTPATH_CAPSULE, NULL);
    if (capsule == NULL || PyModule_AddObjectRef(m, "_C_API", capsule) < 0) {
        Py_XDECREF(capsule);
        Py_DECREF(m);
        return NULL;
    }
    Py_DECREF(capsule);
    return m;
}
