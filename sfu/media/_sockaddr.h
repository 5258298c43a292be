/* Socket addresses between Python's (host, port[, flowinfo, scope_id]) tuples and struct
 * sockaddr_storage, for the compiled media modules (sfu/media/_fastpath.c, _fastrecv.c): one
 * copy, included by each (every function is static). */
#ifndef SFU_MEDIA_SOCKADDR_H
#define SFU_MEDIA_SOCKADDR_H

#include <Python.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>

/* (host, port) as the event loop gives it: IPv6 addresses as 4-tuples */
static PyObject *
addr_to_tuple(const struct sockaddr_storage *addr)
{
    char host[INET6_ADDRSTRLEN];
    if (addr->ss_family == AF_INET) {
        const struct sockaddr_in *a = (const struct sockaddr_in *)addr;
        inet_ntop(AF_INET, &a->sin_addr, host, sizeof host);
        return Py_BuildValue("(si)", host, ntohs(a->sin_port));
    }
    const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)addr;
    inet_ntop(AF_INET6, &a->sin6_addr, host, sizeof host);
    return Py_BuildValue("(siII)", host, ntohs(a->sin6_port), ntohl(a->sin6_flowinfo),
                         a->sin6_scope_id);
}

/* a numeric (host, port[, flowinfo, scope_id]) into `out`; -1 with an exception set */
static int
parse_addr(PyObject *addr, struct sockaddr_storage *out, socklen_t *outlen)
{
    const char *host;
    int port;
    unsigned int flowinfo = 0, scope_id = 0;
    if (!PyTuple_Check(addr) || !PyArg_ParseTuple(addr, "si|II", &host, &port, &flowinfo, &scope_id)) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_TypeError, "addr must be a (host, port) tuple");
        return -1;
    }
    if (port < 0 || port > 65535) {
        PyErr_SetString(PyExc_ValueError, "port must be 0..65535");
        return -1;
    }
    memset(out, 0, sizeof *out);
    struct sockaddr_in *a4 = (struct sockaddr_in *)out;
    if (inet_pton(AF_INET, host, &a4->sin_addr) == 1) {
        a4->sin_family = AF_INET;
        a4->sin_port = htons((uint16_t)port);
        *outlen = sizeof *a4;
        return 0;
    }
    struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)out;
    if (inet_pton(AF_INET6, host, &a6->sin6_addr) == 1) {
        a6->sin6_family = AF_INET6;
        a6->sin6_port = htons((uint16_t)port);
        a6->sin6_flowinfo = htonl(flowinfo);
        a6->sin6_scope_id = scope_id;
        *outlen = sizeof *a6;
        return 0;
    }
    PyErr_Format(PyExc_ValueError, "not a numeric IP address: %s", host);
    return -1;
}

#endif
