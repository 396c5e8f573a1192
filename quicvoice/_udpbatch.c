/* quicvoice._udpbatch: many UDP datagrams per system call, for the ngtcp2 engine's socket loop
 * (quicvoice/engine_ngtcp2/server.py, specs/engine.md "Batched socket I/O in C").
 *
 *   receive(fd, limit) -> [(datagram, (host, port)), ...]
 *       Up to limit datagrams waiting on the non-blocking socket fd, in one recvmmsg(); an
 *       empty list when none waits. The address tuples come from a small cache keyed by the
 *       raw address, so a peer's datagrams carry the same tuple object from call to call: the
 *       engine's connections compare a remote by identity first.
 *   send(fd, datagrams) -> (sent, failed)
 *       Sends a list of (datagram, (host, port)) with sendmmsg(), as many per call as fit. A
 *       datagram the kernel refuses for its own reason (an ICMP error reported on this send,
 *       a bad address) is skipped and counted in failed; when the socket buffer is full
 *       (EAGAIN, ENOBUFS) the rest is counted in failed too: UDP is lossy and QUIC recovers.
 *
 * Nothing here reads a clock or keeps state beyond the address cache; no thread is started. */

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>

/* Bumped whenever quicvoice/engine_ngtcp2 must change with this file. */
#define ABI_VERSION 1
#define MAX_BATCH 64
#define MAX_DATAGRAM 2048
#define ADDRESS_CACHE 512

typedef struct {
    struct sockaddr_storage address;
    socklen_t length;
    PyObject *tuple; /* owned; NULL: free slot */
} CachedAddress;

static CachedAddress address_cache[ADDRESS_CACHE];
static uint8_t receive_buffers[MAX_BATCH][MAX_DATAGRAM];

static uint32_t address_hash(const struct sockaddr *sa) {
    uint32_t h = 2166136261u;
    const uint8_t *bytes;
    size_t n;
    if (sa->sa_family == AF_INET) {
        const struct sockaddr_in *v4 = (const struct sockaddr_in *)sa;
        bytes = (const uint8_t *)&v4->sin_addr;
        n = 4;
        h = (h ^ v4->sin_port) * 16777619u;
    } else {
        const struct sockaddr_in6 *v6 = (const struct sockaddr_in6 *)sa;
        bytes = (const uint8_t *)&v6->sin6_addr;
        n = 16;
        h = (h ^ v6->sin6_port) * 16777619u;
    }
    for (size_t i = 0; i < n; i++) {
        h = (h ^ bytes[i]) * 16777619u;
    }
    return h;
}

static int same_address(const struct sockaddr *a, const struct sockaddr *b) {
    if (a->sa_family != b->sa_family) {
        return 0;
    }
    if (a->sa_family == AF_INET) {
        const struct sockaddr_in *x = (const struct sockaddr_in *)a;
        const struct sockaddr_in *y = (const struct sockaddr_in *)b;
        return x->sin_port == y->sin_port && x->sin_addr.s_addr == y->sin_addr.s_addr;
    }
    const struct sockaddr_in6 *x = (const struct sockaddr_in6 *)a;
    const struct sockaddr_in6 *y = (const struct sockaddr_in6 *)b;
    return x->sin6_port == y->sin6_port &&
           memcmp(&x->sin6_addr, &y->sin6_addr, sizeof(x->sin6_addr)) == 0;
}

/* A new reference to the (host, port) tuple of sa (IPv4 or IPv6; others are not asked for). */
static PyObject *address_tuple(const struct sockaddr *sa, socklen_t length) {
    CachedAddress *slot = &address_cache[address_hash(sa) % ADDRESS_CACHE];
    if (slot->tuple != NULL && same_address((const struct sockaddr *)&slot->address, sa)) {
        Py_INCREF(slot->tuple);
        return slot->tuple;
    }
    char text[INET6_ADDRSTRLEN];
    PyObject *tuple;
    if (sa->sa_family == AF_INET) {
        const struct sockaddr_in *v4 = (const struct sockaddr_in *)sa;
        inet_ntop(AF_INET, &v4->sin_addr, text, sizeof(text));
        tuple = Py_BuildValue("(si)", text, ntohs(v4->sin_port));
    } else {
        const struct sockaddr_in6 *v6 = (const struct sockaddr_in6 *)sa;
        inet_ntop(AF_INET6, &v6->sin6_addr, text, sizeof(text));
        /* As Python's socket module reports an IPv6 peer: (host, port, flowinfo, scope_id). */
        tuple = Py_BuildValue("(siII)", text, ntohs(v6->sin6_port), ntohl(v6->sin6_flowinfo),
                              v6->sin6_scope_id);
    }
    if (tuple == NULL) {
        return NULL;
    }
    Py_XSETREF(slot->tuple, tuple);
    Py_INCREF(tuple);
    memcpy(&slot->address, sa, length);
    slot->length = length;
    return tuple;
}

PyDoc_STRVAR(receive_doc,
             "receive(fd, limit) -> list of (datagram, address)\n\n"
             "Up to limit (at most 64) datagrams waiting on the non-blocking UDP socket fd, read\n"
             "with one recvmmsg(); an empty list when none waits. OSError for other failures.");

static PyObject *module_receive(PyObject *module, PyObject *args) {
    (void)module;
    int fd, limit;
    if (!PyArg_ParseTuple(args, "ii", &fd, &limit)) {
        return NULL;
    }
    if (limit < 1 || limit > MAX_BATCH) {
        PyErr_Format(PyExc_ValueError, "limit must be 1..%d", MAX_BATCH);
        return NULL;
    }
    struct mmsghdr messages[MAX_BATCH];
    struct iovec vectors[MAX_BATCH];
    struct sockaddr_storage addresses[MAX_BATCH];
    memset(messages, 0, sizeof(messages[0]) * (size_t)limit);
    for (int i = 0; i < limit; i++) {
        vectors[i].iov_base = receive_buffers[i];
        vectors[i].iov_len = MAX_DATAGRAM;
        messages[i].msg_hdr.msg_iov = &vectors[i];
        messages[i].msg_hdr.msg_iovlen = 1;
        messages[i].msg_hdr.msg_name = &addresses[i];
        messages[i].msg_hdr.msg_namelen = sizeof(addresses[i]);
    }
    int n = recvmmsg(fd, messages, (unsigned)limit, MSG_DONTWAIT, NULL);
    if (n < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) {
            return PyList_New(0);
        }
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    PyObject *out = PyList_New(0);
    if (out == NULL) {
        return NULL;
    }
    for (int i = 0; i < n; i++) {
        const struct msghdr *header = &messages[i].msg_hdr;
        const struct sockaddr *from = (const struct sockaddr *)&addresses[i];
        if ((header->msg_flags & MSG_TRUNC) ||
            (from->sa_family != AF_INET && from->sa_family != AF_INET6)) {
            continue; /* larger than any QUIC datagram we accept, or not from an IP peer */
        }
        PyObject *remote = address_tuple(from, header->msg_namelen);
        if (remote == NULL) {
            Py_DECREF(out);
            return NULL;
        }
        PyObject *item = Py_BuildValue("(y#N)", receive_buffers[i], (Py_ssize_t)messages[i].msg_len,
                                       remote);
        if (item == NULL || PyList_Append(out, item) < 0) {
            Py_XDECREF(item);
            Py_DECREF(out);
            return NULL;
        }
        Py_DECREF(item);
    }
    return out;
}

static int parse_address(PyObject *address, int family, struct sockaddr_storage *ss,
                         socklen_t *length) {
    if (!PyTuple_Check(address) || PyTuple_GET_SIZE(address) < 2) {
        PyErr_SetString(PyExc_TypeError, "an address is a (host, port) tuple");
        return -1;
    }
    const char *host = PyUnicode_AsUTF8(PyTuple_GET_ITEM(address, 0));
    if (host == NULL) {
        return -1;
    }
    long port = PyLong_AsLong(PyTuple_GET_ITEM(address, 1));
    if (port == -1 && PyErr_Occurred()) {
        return -1;
    }
    if (port < 0 || port > 65535) {
        PyErr_Format(PyExc_ValueError, "not a port: %ld", port);
        return -1;
    }
    memset(ss, 0, sizeof(*ss));
    struct sockaddr_in *v4 = (struct sockaddr_in *)ss;
    struct sockaddr_in6 *v6 = (struct sockaddr_in6 *)ss;
    if (family == AF_INET && inet_pton(AF_INET, host, &v4->sin_addr) == 1) {
        v4->sin_family = AF_INET;
        v4->sin_port = htons((uint16_t)port);
        *length = sizeof(*v4);
        return 0;
    }
    if (family == AF_INET6) {
        if (inet_pton(AF_INET6, host, &v6->sin6_addr) != 1) {
            /* An IPv4 peer of a dual-stack socket: its mapped address. */
            struct in_addr mapped;
            if (inet_pton(AF_INET, host, &mapped) != 1) {
                goto bad;
            }
            v6->sin6_addr.s6_addr[10] = 0xff;
            v6->sin6_addr.s6_addr[11] = 0xff;
            memcpy(&v6->sin6_addr.s6_addr[12], &mapped, 4);
        }
        v6->sin6_family = AF_INET6;
        v6->sin6_port = htons((uint16_t)port);
        if (PyTuple_GET_SIZE(address) >= 4) {
            v6->sin6_scope_id = (uint32_t)PyLong_AsUnsignedLong(PyTuple_GET_ITEM(address, 3));
            if (PyErr_Occurred()) {
                return -1;
            }
        }
        *length = sizeof(*v6);
        return 0;
    }
bad:
    PyErr_Format(PyExc_ValueError, "not an address of this socket's family: %s", host);
    return -1;
}

static int pending_icmp_error(int error) {
    return error == ECONNREFUSED || error == EHOSTUNREACH || error == ENETUNREACH ||
           error == EHOSTDOWN || error == ENETDOWN || error == EPROTO;
}

PyDoc_STRVAR(send_doc,
             "send(fd, family, datagrams) -> (sent, failed)\n\n"
             "Send a list of (datagram, address) on the non-blocking UDP socket fd of address\n"
             "family (socket.AF_INET or AF_INET6) with sendmmsg(). A datagram the kernel refuses\n"
             "is skipped and counted as failed; a full socket buffer fails the rest.");

static PyObject *module_send(PyObject *module, PyObject *args) {
    (void)module;
    int fd, family;
    PyObject *datagrams;
    if (!PyArg_ParseTuple(args, "iiO!", &fd, &family, &PyList_Type, &datagrams)) {
        return NULL;
    }
    if (family != AF_INET && family != AF_INET6) {
        PyErr_SetString(PyExc_ValueError, "family is AF_INET or AF_INET6");
        return NULL;
    }
    Py_ssize_t total = PyList_GET_SIZE(datagrams);
    Py_ssize_t sent = 0, failed = 0, next = 0;
    struct mmsghdr messages[MAX_BATCH];
    struct iovec vectors[MAX_BATCH];
    struct sockaddr_storage addresses[MAX_BATCH];
    while (next < total) {
        int count = 0;
        Py_ssize_t first = next;
        for (; next < total && count < MAX_BATCH; next++) {
            PyObject *item = PyList_GET_ITEM(datagrams, next);
            if (!PyTuple_Check(item) || PyTuple_GET_SIZE(item) != 2 ||
                !PyBytes_Check(PyTuple_GET_ITEM(item, 0))) {
                PyErr_SetString(PyExc_TypeError, "datagrams is a list of (bytes, address)");
                return NULL;
            }
            PyObject *data = PyTuple_GET_ITEM(item, 0);
            socklen_t length;
            if (parse_address(PyTuple_GET_ITEM(item, 1), family, &addresses[count], &length) <
                0) {
                return NULL;
            }
            vectors[count].iov_base = PyBytes_AS_STRING(data);
            vectors[count].iov_len = (size_t)PyBytes_GET_SIZE(data);
            memset(&messages[count], 0, sizeof(messages[count]));
            messages[count].msg_hdr.msg_iov = &vectors[count];
            messages[count].msg_hdr.msg_iovlen = 1;
            messages[count].msg_hdr.msg_name = &addresses[count];
            messages[count].msg_hdr.msg_namelen = length;
            count++;
        }
        int done = 0, retried = 0;
        while (done < count) {
            int n = sendmmsg(fd, messages + done, (unsigned)(count - done), MSG_DONTWAIT);
            if (n > 0) {
                done += n;
                sent += n;
                retried = 0;
                continue;
            }
            if (n < 0 && errno == EINTR) {
                continue;
            }
            if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == ENOBUFS)) {
                failed += total - (first + done);
                return Py_BuildValue("(nn)", sent, failed);
            }
            if (n < 0 && !retried && pending_icmp_error(errno)) {
                /* An earlier datagram's ICMP error, reported on this send: this one was not
                 * sent, and the error is now consumed. */
                retried = 1;
                continue;
            }
            done++; /* this datagram failed on its own */
            failed++;
            retried = 0;
        }
    }
    return Py_BuildValue("(nn)", sent, failed);
}

static PyMethodDef module_methods[] = {
    {"receive", module_receive, METH_VARARGS, receive_doc},
    {"send", module_send, METH_VARARGS, send_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef udpbatch_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "quicvoice._udpbatch",
    .m_doc = "Many UDP datagrams per system call (recvmmsg, sendmmsg).",
    .m_size = -1,
    .m_methods = module_methods,
};

PyMODINIT_FUNC PyInit__udpbatch(void) {
    PyObject *module = PyModule_Create(&udpbatch_module);
    if (module == NULL) {
        return NULL;
    }
    if (PyModule_AddIntConstant(module, "ABI_VERSION", ABI_VERSION) < 0 ||
        PyModule_AddIntConstant(module, "MAX_BATCH", MAX_BATCH) < 0) {
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
