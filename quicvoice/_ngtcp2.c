/* quicvoice._ngtcp2: Debian's ngtcp2 (with ngtcp2_crypto_gnutls) bound as a sans-I/O server
 * connection, for the native-engine prototype (quicvoice/engine_ngtcp2/, specs/engine-ngtcp2.md).
 *
 * Nothing here opens a socket or reads a clock: datagrams, addresses and the time (ns) come in
 * as arguments, datagrams to send come back as values. Every connection ID and stateless-reset
 * token the connection issues comes from the Python callable it was given (the project's
 * QUIC-LB generator), through ngtcp2's get_new_connection_id callback; the handshake SCID and
 * its token are given at construction.
 *
 * Types:
 *   ServerContext  gnutls certificate credentials and the ALPN, shared by connections.
 *   Connection     one server connection: receive(), flush(), handle_expiry(), expiry,
 *                  open_uni_stream(), send_stream(), close(), source_cids.
 * Functions:
 *   accept(datagram) -> (version, dcid, scid) for a first Initial ngtcp2 would accept, else None.
 *   client(...) -> a client Connection that accepts any certificate: the benchmark's cheap load
 *                  generator (benchmarks/bench_ngtcp2.py), not a client engine.
 *   stateless_reset(token, size) -> a stateless reset packet of about size octets.
 *   dispatch(datagrams, routes, cid_len, now, forwarder) -> each short-header datagram whose
 *                  DCID routes to a Connection handed to it in C (the engine's fast path).
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>

#include <gnutls/crypto.h>
#include <gnutls/gnutls.h>
#include <ngtcp2/ngtcp2.h>
#include <ngtcp2/ngtcp2_crypto.h>
#include <ngtcp2/ngtcp2_crypto_gnutls.h>

/* Bumped whenever quicvoice/engine_ngtcp2 must change with this file. */
#define ABI_VERSION 3
#define MAX_SEND_STREAMS 8
#define MAX_VECS 16
/* Bounds one flush(): a voice connection writes a few packets per call. */
#define MAX_PACKETS_PER_FLUSH 64
#define TLS_PRIORITY                                                                            \
    "%DISABLE_TLS13_COMPAT_MODE:NORMAL:-VERS-ALL:+VERS-TLS1.3:-CIPHER-ALL:+AES-128-GCM:"        \
    "+AES-256-GCM:+CHACHA20-POLY1305:-GROUP-ALL:+GROUP-X25519:+GROUP-SECP256R1:"                \
    "+GROUP-SECP384R1"

/* -- ServerContext ------------------------------------------------------------------------- */

typedef struct {
    PyObject_HEAD
    gnutls_certificate_credentials_t credentials;
    gnutls_priority_t priority;
    uint8_t alpn[256];
    unsigned alpn_len;
} ContextObject;

static int context_init(ContextObject *self, PyObject *args, PyObject *kwargs) {
    static char *names[] = {"certificate", "private_key", "alpn", NULL};
    Py_buffer cert, key, alpn;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "y*y*y*", names, &cert, &key, &alpn)) {
        return -1;
    }
    int result = -1;
    if (alpn.len < 1 || alpn.len > 255) {
        PyErr_SetString(PyExc_ValueError, "alpn must be 1..255 octets");
        goto done;
    }
    if (self->credentials != NULL) {
        PyErr_SetString(PyExc_TypeError, "ServerContext is already initialised");
        goto done;
    }
    memcpy(self->alpn, alpn.buf, (size_t)alpn.len);
    self->alpn_len = (unsigned)alpn.len;
    int rv = gnutls_certificate_allocate_credentials(&self->credentials);
    if (rv == 0) {
        gnutls_datum_t cert_datum = {(unsigned char *)cert.buf, (unsigned)cert.len};
        gnutls_datum_t key_datum = {(unsigned char *)key.buf, (unsigned)key.len};
        rv = gnutls_certificate_set_x509_key_mem(self->credentials, &cert_datum, &key_datum,
                                                 GNUTLS_X509_FMT_PEM);
    }
    if (rv == 0) {
        rv = gnutls_priority_init(&self->priority, TLS_PRIORITY, NULL);
    }
    if (rv < 0) {
        PyErr_Format(PyExc_ValueError, "gnutls refused the certificate or key: %s",
                     gnutls_strerror(rv));
        goto done;
    }
    result = 0;
done:
    PyBuffer_Release(&cert);
    PyBuffer_Release(&key);
    PyBuffer_Release(&alpn);
    return result;
}

static void context_dealloc(ContextObject *self) {
    if (self->priority != NULL) {
        gnutls_priority_deinit(self->priority);
    }
    if (self->credentials != NULL) {
        gnutls_certificate_free_credentials(self->credentials);
    }
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyTypeObject ContextType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "quicvoice._ngtcp2.ServerContext",
    .tp_basicsize = sizeof(ContextObject),
    .tp_dealloc = (destructor)context_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "gnutls credentials (PEM certificate chain and key) and the one ALPN served.",
    .tp_init = (initproc)context_init,
    .tp_new = PyType_GenericNew,
};

static PyTypeObject ConnectionType;

/* -- send buffers ---------------------------------------------------------------------------
 * ngtcp2 keeps pointers to stream data until the peer acknowledges it, so every send_stream()
 * is copied into its own chunk that stays put until acknowledged. */

typedef struct Chunk {
    struct Chunk *next;
    uint64_t offset; /* stream offset of data[0] */
    size_t len;
    uint8_t data[];
} Chunk;

typedef struct {
    int64_t id;   /* -1: slot free */
    Chunk *head;  /* oldest unacknowledged chunk */
    Chunk *tail;
    Chunk *cursor;        /* first chunk with octets not yet given to ngtcp2 */
    size_t cursor_done;   /* octets of *cursor already given */
    uint64_t end;         /* stream offset after the last queued octet */
    uint64_t acked;       /* stream offset up to which the peer acknowledged everything */
    int fin;              /* the application ended the stream */
    int fin_sent;
    int blocked;          /* flow control or shut: skip for the rest of this flush */
    int reset;            /* this side reset it (reset_stream) */
} SendStream;

static void stream_free_chunks(SendStream *s) {
    Chunk *c = s->head;
    while (c != NULL) {
        Chunk *next = c->next;
        PyMem_Free(c);
        c = next;
    }
    s->head = s->tail = s->cursor = NULL;
    s->cursor_done = 0;
}

static int stream_pending(const SendStream *s) {
    return s->id >= 0 && !s->blocked && (s->cursor != NULL || (s->fin && !s->fin_sent));
}

static void stream_advance(SendStream *s, size_t n) {
    while (n > 0 && s->cursor != NULL) {
        size_t left = s->cursor->len - s->cursor_done;
        if (n < left) {
            s->cursor_done += n;
            return;
        }
        n -= left;
        s->cursor = s->cursor->next;
        s->cursor_done = 0;
    }
}

static void stream_acked(SendStream *s, uint64_t acked_end) {
    if (acked_end > s->acked) {
        s->acked = acked_end;
    }
    while (s->head != NULL && s->head->offset + s->head->len <= acked_end &&
           s->head != s->cursor) {
        Chunk *next = s->head->next;
        PyMem_Free(s->head);
        s->head = next;
    }
    if (s->head == NULL) {
        s->tail = NULL;
    }
}

/* -- Connection ------------------------------------------------------------------------------ */

typedef struct {
    PyObject_HEAD
    ngtcp2_conn *conn;
    gnutls_session_t tls;
    ngtcp2_crypto_conn_ref ref;
    ngtcp2_connection_close_error ccerr;
    ContextObject *context;
    gnutls_certificate_credentials_t client_credentials; /* client connections only */
    struct sockaddr_storage local;
    socklen_t local_len;
    /* The last remote address seen or sent to, as sockaddr and as the Python tuple. */
    struct sockaddr_storage remote;
    socklen_t remote_len;
    PyObject *remote_obj;
    PyObject *cid_factory;
    PyObject *cid_retired;
    PyObject *events; /* the list receive() returns, while it runs */
    PyObject *aborts; /* (stream_id, error_code, reset) the peer sent, until take_aborts() */
    int callback_failed;
    SendStream streams[MAX_SEND_STREAMS];
    uint8_t out[NGTCP2_MAX_UDP_PAYLOAD_SIZE > 1452 ? NGTCP2_MAX_UDP_PAYLOAD_SIZE : 1452];
} ConnectionObject;

static int parse_address(PyObject *address, struct sockaddr_storage *ss, socklen_t *len) {
    const char *host;
    int port;
    if (!PyTuple_Check(address) || PyTuple_GET_SIZE(address) < 2) {
        PyErr_SetString(PyExc_TypeError, "an address is a (host, port) tuple");
        return -1;
    }
    host = PyUnicode_AsUTF8(PyTuple_GET_ITEM(address, 0));
    if (host == NULL) {
        return -1;
    }
    port = PyLong_AsLong(PyTuple_GET_ITEM(address, 1)) & 0xffff;
    if (PyErr_Occurred()) {
        return -1;
    }
    memset(ss, 0, sizeof(*ss));
    struct sockaddr_in *v4 = (struct sockaddr_in *)ss;
    struct sockaddr_in6 *v6 = (struct sockaddr_in6 *)ss;
    if (inet_pton(AF_INET, host, &v4->sin_addr) == 1) {
        v4->sin_family = AF_INET;
        v4->sin_port = htons((uint16_t)port);
        *len = sizeof(*v4);
        return 0;
    }
    if (inet_pton(AF_INET6, host, &v6->sin6_addr) == 1) {
        v6->sin6_family = AF_INET6;
        v6->sin6_port = htons((uint16_t)port);
        *len = sizeof(*v6);
        return 0;
    }
    PyErr_Format(PyExc_ValueError, "not an IP address: %s", host);
    return -1;
}

static PyObject *address_tuple(const struct sockaddr *sa) {
    char text[INET6_ADDRSTRLEN];
    if (sa->sa_family == AF_INET) {
        const struct sockaddr_in *v4 = (const struct sockaddr_in *)sa;
        inet_ntop(AF_INET, &v4->sin_addr, text, sizeof(text));
        return Py_BuildValue("(si)", text, ntohs(v4->sin_port));
    }
    const struct sockaddr_in6 *v6 = (const struct sockaddr_in6 *)sa;
    inet_ntop(AF_INET6, &v6->sin6_addr, text, sizeof(text));
    return Py_BuildValue("(si)", text, ntohs(v6->sin6_port));
}

static ngtcp2_conn *get_conn(ngtcp2_crypto_conn_ref *ref) {
    return ((ConnectionObject *)ref->user_data)->conn;
}

static void rand_cb(uint8_t *dest, size_t destlen, const ngtcp2_rand_ctx *ctx) {
    (void)ctx;
    gnutls_rnd(GNUTLS_RND_RANDOM, dest, destlen);
}

static int get_new_connection_id_cb(ngtcp2_conn *conn, ngtcp2_cid *cid, uint8_t *token,
                                    size_t cidlen, void *user_data) {
    (void)conn;
    ConnectionObject *self = user_data;
    PyObject *result = PyObject_CallFunction(self->cid_factory, "n", (Py_ssize_t)cidlen);
    if (result == NULL) {
        self->callback_failed = 1;
        return NGTCP2_ERR_CALLBACK_FAILURE;
    }
    char *cid_data, *token_data;
    Py_ssize_t cid_len, token_len;
    if (!PyTuple_Check(result) || PyTuple_GET_SIZE(result) != 2 ||
        PyBytes_AsStringAndSize(PyTuple_GET_ITEM(result, 0), &cid_data, &cid_len) < 0 ||
        PyBytes_AsStringAndSize(PyTuple_GET_ITEM(result, 1), &token_data, &token_len) < 0 ||
        (size_t)cid_len != cidlen || token_len != NGTCP2_STATELESS_RESET_TOKENLEN) {
        if (!PyErr_Occurred()) {
            PyErr_Format(PyExc_ValueError,
                         "the CID factory must return (%zu-octet CID, 16-octet token)", cidlen);
        }
        Py_DECREF(result);
        self->callback_failed = 1;
        return NGTCP2_ERR_CALLBACK_FAILURE;
    }
    ngtcp2_cid_init(cid, (const uint8_t *)cid_data, cidlen);
    memcpy(token, token_data, NGTCP2_STATELESS_RESET_TOKENLEN);
    Py_DECREF(result);
    return 0;
}

static int remove_connection_id_cb(ngtcp2_conn *conn, const ngtcp2_cid *cid, void *user_data) {
    (void)conn;
    ConnectionObject *self = user_data;
    PyObject *result =
        PyObject_CallFunction(self->cid_retired, "y#", cid->data, (Py_ssize_t)cid->datalen);
    if (result == NULL) {
        self->callback_failed = 1;
        return NGTCP2_ERR_CALLBACK_FAILURE;
    }
    Py_DECREF(result);
    return 0;
}

static int add_event(ConnectionObject *self, int64_t stream_id, const uint8_t *data, size_t len,
                     int fin) {
    if (self->events == NULL) {
        return 0;
    }
    /* A FIN alone comes with data NULL, which "y#" would make None. */
    PyObject *event = Py_BuildValue("(Ly#O)", (long long)stream_id,
                                    data != NULL ? data : (const uint8_t *)"",
                                    data != NULL ? (Py_ssize_t)len : 0, fin ? Py_True : Py_False);
    if (event == NULL || PyList_Append(self->events, event) < 0) {
        Py_XDECREF(event);
        self->callback_failed = 1;
        return NGTCP2_ERR_CALLBACK_FAILURE;
    }
    Py_DECREF(event);
    return 0;
}

static int recv_stream_data_cb(ngtcp2_conn *conn, uint32_t flags, int64_t stream_id,
                               uint64_t offset, const uint8_t *data, size_t datalen,
                               void *user_data, void *stream_user_data) {
    (void)offset;
    (void)stream_user_data;
    /* The application takes every octet at once: give the peer its credit back. */
    ngtcp2_conn_extend_max_stream_offset(conn, stream_id, datalen);
    ngtcp2_conn_extend_max_offset(conn, datalen);
    return add_event(user_data, stream_id, data, datalen, flags & NGTCP2_STREAM_DATA_FLAG_FIN);
}

static int recv_datagram_cb(ngtcp2_conn *conn, uint32_t flags, const uint8_t *data,
                            size_t datalen, void *user_data) {
    (void)conn;
    (void)flags;
    return add_event(user_data, -1, data, datalen, 0);
}

static SendStream *find_stream(ConnectionObject *self, int64_t stream_id) {
    for (int i = 0; i < MAX_SEND_STREAMS; i++) {
        if (self->streams[i].id == stream_id) {
            return &self->streams[i];
        }
    }
    return NULL;
}

/* The peer's RESET_STREAM (reset 1) or STOP_SENDING (reset 0), kept for take_aborts(). */
static int add_abort(ConnectionObject *self, int64_t stream_id, uint64_t code, int reset) {
    if (self->aborts == NULL && (self->aborts = PyList_New(0)) == NULL) {
        self->callback_failed = 1;
        return NGTCP2_ERR_CALLBACK_FAILURE;
    }
    PyObject *abort = Py_BuildValue("(LKO)", (long long)stream_id, (unsigned long long)code,
                                    reset ? Py_True : Py_False);
    if (abort == NULL || PyList_Append(self->aborts, abort) < 0) {
        Py_XDECREF(abort);
        self->callback_failed = 1;
        return NGTCP2_ERR_CALLBACK_FAILURE;
    }
    Py_DECREF(abort);
    return 0;
}

static int stream_reset_cb(ngtcp2_conn *conn, int64_t stream_id, uint64_t final_size,
                           uint64_t app_error_code, void *user_data, void *stream_user_data) {
    (void)conn;
    (void)final_size;
    (void)stream_user_data;
    return add_abort(user_data, stream_id, app_error_code, 1);
}

static int acked_stream_data_offset_cb(ngtcp2_conn *conn, int64_t stream_id, uint64_t offset,
                                       uint64_t datalen, void *user_data,
                                       void *stream_user_data) {
    (void)conn;
    (void)stream_user_data;
    SendStream *s = find_stream(user_data, stream_id);
    if (s != NULL) {
        stream_acked(s, offset + datalen);
    }
    return 0;
}

static int stream_close_cb(ngtcp2_conn *conn, uint32_t flags, int64_t stream_id,
                           uint64_t app_error_code, void *user_data, void *stream_user_data) {
    (void)stream_user_data;
    SendStream *s = find_stream(user_data, stream_id);
    /* ngtcp2 0.12 has no callback for a received STOP_SENDING: it answers with RESET_STREAM
     * itself and closes the stream with the peer's code once that is acknowledged. A stream
     * of ours that closes with an error code this side did not set was stopped by the peer. */
    if (ngtcp2_conn_is_local_stream(conn, stream_id) && (stream_id & 0x2) &&
        (flags & NGTCP2_STREAM_CLOSE_FLAG_APP_ERROR_CODE_SET) && (s == NULL || !s->reset)) {
        int rv = add_abort(user_data, stream_id, app_error_code, 0);
        if (rv != 0) {
            return rv;
        }
    }
    if (s != NULL) {
        stream_free_chunks(s);
        s->id = -1;
    }
    if (!ngtcp2_conn_is_local_stream(conn, stream_id)) {
        if (stream_id & 0x2) {
            ngtcp2_conn_extend_max_streams_uni(conn, 1);
        } else {
            ngtcp2_conn_extend_max_streams_bidi(conn, 1);
        }
    }
    return 0;
}

/* What server and client connections share: their addresses, CID hooks, send-stream slots. */
static int connection_prepare(ConnectionObject *self, PyObject *local, PyObject *remote,
                              PyObject *factory, PyObject *retired) {
    if (parse_address(local, &self->local, &self->local_len) < 0 ||
        parse_address(remote, &self->remote, &self->remote_len) < 0) {
        return -1;
    }
    for (int i = 0; i < MAX_SEND_STREAMS; i++) {
        self->streams[i].id = -1;
    }
    Py_INCREF(remote);
    Py_XSETREF(self->remote_obj, remote);
    Py_INCREF(factory);
    Py_XSETREF(self->cid_factory, factory);
    Py_INCREF(retired);
    Py_XSETREF(self->cid_retired, retired);
    ngtcp2_connection_close_error_default(&self->ccerr);
    return 0;
}

/* The callbacks both sides install (each adds its own for the first Initial). */
static void common_callbacks(ngtcp2_callbacks *callbacks) {
    memset(callbacks, 0, sizeof(*callbacks));
    callbacks->recv_crypto_data = ngtcp2_crypto_recv_crypto_data_cb;
    callbacks->encrypt = ngtcp2_crypto_encrypt_cb;
    callbacks->decrypt = ngtcp2_crypto_decrypt_cb;
    callbacks->hp_mask = ngtcp2_crypto_hp_mask_cb;
    callbacks->update_key = ngtcp2_crypto_update_key_cb;
    callbacks->delete_crypto_aead_ctx = ngtcp2_crypto_delete_crypto_aead_ctx_cb;
    callbacks->delete_crypto_cipher_ctx = ngtcp2_crypto_delete_crypto_cipher_ctx_cb;
    callbacks->get_path_challenge_data = ngtcp2_crypto_get_path_challenge_data_cb;
    callbacks->version_negotiation = ngtcp2_crypto_version_negotiation_cb;
    callbacks->rand = rand_cb;
    callbacks->get_new_connection_id = get_new_connection_id_cb;
    callbacks->remove_connection_id = remove_connection_id_cb;
    callbacks->recv_stream_data = recv_stream_data_cb;
    callbacks->recv_datagram = recv_datagram_cb;
    callbacks->acked_stream_data_offset = acked_stream_data_offset_cb;
    callbacks->stream_close = stream_close_cb;
    callbacks->stream_reset = stream_reset_cb;
}

/* The settings and transport parameters both sides start from (each sets its stream limits). */
static void common_settings(ngtcp2_settings *settings, ngtcp2_transport_params *params,
                            unsigned long long now, unsigned long long idle_ms) {
    ngtcp2_settings_default(settings);
    settings->initial_ts = (ngtcp2_tstamp)now;
    /* Acknowledge every ack-eliciting packet at once: ngtcp2 then puts the ACK into the echo
     * written in the same flush(), where by default it waits max_ack_delay and goes alone
     * (one ACK-only packet per voice frame). */
    settings->ack_thresh = 1;
    ngtcp2_transport_params_default(params);
    params->initial_max_stream_data_bidi_local = 256 * 1024;
    params->initial_max_stream_data_bidi_remote = 256 * 1024;
    params->initial_max_stream_data_uni = 256 * 1024;
    params->initial_max_data = 1024 * 1024;
    params->max_idle_timeout = (ngtcp2_duration)idle_ms * NGTCP2_MILLISECONDS;
    params->active_connection_id_limit = 8;
}

/* Hand the TLS session to ngtcp2 (and ngtcp2's connection to the crypto callbacks). */
static void attach_tls(ConnectionObject *self) {
    self->ref.get_conn = get_conn;
    self->ref.user_data = self;
    gnutls_session_set_ptr(self->tls, &self->ref);
    ngtcp2_conn_set_tls_native_handle(self->conn, self->tls);
}

static int connection_init(ConnectionObject *self, PyObject *args, PyObject *kwargs) {
    static char *names[] = {"context",  "client_dcid", "client_scid", "scid",
                            "reset_token", "version",  "local",       "remote",
                            "now",      "cid_factory", "cid_retired", "idle_timeout_ms", NULL};
    ContextObject *context;
    Py_buffer client_dcid, client_scid, scid, token;
    unsigned int version;
    PyObject *local, *remote, *factory, *retired;
    unsigned long long now, idle_ms;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O!y*y*y*y*IOOKOOK", names, &ContextType,
                                     &context, &client_dcid, &client_scid, &scid, &token,
                                     &version, &local, &remote, &now, &factory, &retired,
                                     &idle_ms)) {
        return -1;
    }
    int result = -1;
    if (self->conn != NULL) {
        PyErr_SetString(PyExc_TypeError, "Connection is already initialised");
        goto done;
    }
    if (client_dcid.len > NGTCP2_MAX_CIDLEN || client_scid.len > NGTCP2_MAX_CIDLEN ||
        scid.len < 1 || scid.len > NGTCP2_MAX_CIDLEN ||
        token.len != NGTCP2_STATELESS_RESET_TOKENLEN) {
        PyErr_SetString(PyExc_ValueError, "CIDs are 0..20 octets, the reset token 16");
        goto done;
    }
    if (!PyCallable_Check(factory) || !PyCallable_Check(retired)) {
        PyErr_SetString(PyExc_TypeError, "cid_factory and cid_retired must be callable");
        goto done;
    }
    if (connection_prepare(self, local, remote, factory, retired) < 0) {
        goto done;
    }
    Py_INCREF(context);
    Py_XSETREF(self->context, context);

    ngtcp2_callbacks callbacks;
    common_callbacks(&callbacks);
    callbacks.recv_client_initial = ngtcp2_crypto_recv_client_initial_cb;
    ngtcp2_settings settings;
    ngtcp2_transport_params params;
    common_settings(&settings, &params, now, idle_ms);
    /* As many as aioquic allows (128 each): the voice layer's own limits (SessionLimits:
     * unexpected streams, open peer streams) then close a peer that opens too many with
     * LIMIT_EXCEEDED on both engines, instead of this engine holding it back silently. */
    params.initial_max_streams_bidi = 128;
    params.initial_max_streams_uni = 128;
    params.max_datagram_frame_size = 65535;
    params.stateless_reset_token_present = 1;
    memcpy(params.stateless_reset_token, token.buf, NGTCP2_STATELESS_RESET_TOKENLEN);
    ngtcp2_cid_init(&params.original_dcid, client_dcid.buf, (size_t)client_dcid.len);

    ngtcp2_cid dcid, our_scid;
    ngtcp2_cid_init(&dcid, client_scid.buf, (size_t)client_scid.len);
    ngtcp2_cid_init(&our_scid, scid.buf, (size_t)scid.len);
    ngtcp2_path path = {
        {(ngtcp2_sockaddr *)&self->local, self->local_len},
        {(ngtcp2_sockaddr *)&self->remote, self->remote_len},
        NULL,
    };
    int rv = ngtcp2_conn_server_new(&self->conn, &dcid, &our_scid, &path, version, &callbacks,
                                    &settings, &params, NULL, self);
    if (rv != 0) {
        self->conn = NULL;
        PyErr_Format(PyExc_ValueError, "ngtcp2_conn_server_new: %s", ngtcp2_strerror(rv));
        goto done;
    }
    rv = gnutls_init(&self->tls, GNUTLS_SERVER | GNUTLS_NO_END_OF_EARLY_DATA);
    if (rv == 0) {
        rv = ngtcp2_crypto_gnutls_configure_server_session(self->tls) == 0 ? 0 : -1;
    }
    if (rv == 0) {
        rv = gnutls_priority_set(self->tls, context->priority);
    }
    if (rv == 0) {
        rv = gnutls_credentials_set(self->tls, GNUTLS_CRD_CERTIFICATE, context->credentials);
    }
    if (rv == 0) {
        gnutls_datum_t alpn = {context->alpn, context->alpn_len};
        rv = gnutls_alpn_set_protocols(self->tls, &alpn, 1, GNUTLS_ALPN_MANDATORY);
    }
    if (rv != 0) {
        PyErr_Format(PyExc_ValueError, "gnutls session setup failed: %s", gnutls_strerror(rv));
        goto done;
    }
    attach_tls(self);
    result = 0;
done:
    PyBuffer_Release(&client_dcid);
    PyBuffer_Release(&client_scid);
    PyBuffer_Release(&scid);
    PyBuffer_Release(&token);
    return result;
}

static void connection_dealloc(ConnectionObject *self) {
    if (self->conn != NULL) {
        ngtcp2_conn_del(self->conn);
    }
    if (self->tls != NULL) {
        gnutls_deinit(self->tls);
    }
    if (self->client_credentials != NULL) {
        gnutls_certificate_free_credentials(self->client_credentials);
    }
    for (int i = 0; i < MAX_SEND_STREAMS; i++) {
        stream_free_chunks(&self->streams[i]);
    }
    Py_XDECREF(self->context);
    Py_XDECREF(self->remote_obj);
    Py_XDECREF(self->cid_factory);
    Py_XDECREF(self->cid_retired);
    Py_XDECREF(self->events);
    Py_XDECREF(self->aborts);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int check_ready(ConnectionObject *self) {
    if (self->conn == NULL) {
        PyErr_SetString(PyExc_TypeError, "Connection is not initialised");
        return -1;
    }
    return 0;
}

/* An ngtcp2 error code that the caller must act on, or a Python error from a callback. */
static PyObject *status_or_error(ConnectionObject *self, int rv) {
    if (self->callback_failed) {
        self->callback_failed = 0;
        if (PyErr_Occurred()) {
            return NULL;
        }
    }
    return PyLong_FromLong(rv);
}

PyDoc_STRVAR(receive_doc,
             "receive(datagram, remote, now) -> (status, events)\n\n"
             "Process one UDP datagram from remote ((host, port)) at now (ns). status is 0 or\n"
             "ngtcp2's (negative) error code; events is a list of (stream_id, data, fin), a\n"
             "stream_id of -1 for a DATAGRAM frame.");

/* receive() for data from remote: the (status, events) tuple, or NULL with a Python error. */
static PyObject *receive_datagram(ConnectionObject *self, const uint8_t *data, size_t len,
                                  PyObject *remote, unsigned long long now) {
    struct sockaddr_storage ss;
    socklen_t ss_len;
    const struct sockaddr_storage *from = &self->remote;
    socklen_t from_len = self->remote_len;
    if (remote != self->remote_obj) {
        int same = PyObject_RichCompareBool(remote, self->remote_obj, Py_EQ);
        if (same < 0) {
            return NULL;
        }
        if (!same) {
            if (parse_address(remote, &ss, &ss_len) < 0) {
                return NULL;
            }
            from = &ss;
            from_len = ss_len;
        }
    }
    ngtcp2_path path = {
        {(ngtcp2_sockaddr *)&self->local, self->local_len},
        {(ngtcp2_sockaddr *)from, from_len},
        NULL,
    };
    ngtcp2_pkt_info pi = {0};
    PyObject *events = PyList_New(0);
    if (events == NULL) {
        return NULL;
    }
    self->events = events;
    int rv = ngtcp2_conn_read_pkt(self->conn, &path, &pi, data, len, (ngtcp2_tstamp)now);
    self->events = NULL;
    if (from != &self->remote && rv == 0) {
        /* The peer is now here (migration or NAT rebinding): cache its address. */
        memcpy(&self->remote, from, from_len);
        self->remote_len = from_len;
        Py_INCREF(remote);
        Py_SETREF(self->remote_obj, remote);
    }
    if (rv != 0 && self->ccerr.type == NGTCP2_CONNECTION_CLOSE_ERROR_CODE_TYPE_TRANSPORT &&
        self->ccerr.error_code == 0) {
        ngtcp2_connection_close_error_set_transport_error_liberr(&self->ccerr, rv, NULL, 0);
    }
    PyObject *status = status_or_error(self, rv);
    if (status == NULL) {
        Py_DECREF(events);
        return NULL;
    }
    return Py_BuildValue("(NN)", status, events);
}

static PyObject *connection_receive(ConnectionObject *self, PyObject *args) {
    Py_buffer data;
    PyObject *remote;
    unsigned long long now;
    if (check_ready(self) < 0 || !PyArg_ParseTuple(args, "y*OK", &data, &remote, &now)) {
        return NULL;
    }
    PyObject *result = receive_datagram(self, data.buf, (size_t)data.len, remote, now);
    PyBuffer_Release(&data);
    return result;
}

static PyObject *remote_of(ConnectionObject *self, const ngtcp2_path *path) {
    if (path->remote.addrlen == self->remote_len &&
        memcmp(path->remote.addr, &self->remote, self->remote_len) == 0) {
        Py_INCREF(self->remote_obj);
        return self->remote_obj;
    }
    return address_tuple((const struct sockaddr *)path->remote.addr);
}

static int append_packet(ConnectionObject *self, PyObject *out, const ngtcp2_path *path,
                         size_t len) {
    PyObject *remote = remote_of(self, path);
    if (remote == NULL) {
        return -1;
    }
    PyObject *item = Py_BuildValue("(y#N)", self->out, (Py_ssize_t)len, remote);
    if (item == NULL) {
        return -1;
    }
    int rv = PyList_Append(out, item);
    Py_DECREF(item);
    return rv;
}

PyDoc_STRVAR(flush_doc,
             "flush(now) -> (status, datagrams)\n\n"
             "Write every packet due at now (ns): queued stream data, ACKs, handshake, probes.\n"
             "datagrams is a list of (datagram, (host, port)); status 0 or ngtcp2's error.");

static PyObject *connection_flush(ConnectionObject *self, PyObject *args) {
    unsigned long long now;
    if (check_ready(self) < 0 || !PyArg_ParseTuple(args, "K", &now)) {
        return NULL;
    }
    PyObject *out = PyList_New(0);
    if (out == NULL) {
        return NULL;
    }
    for (int i = 0; i < MAX_SEND_STREAMS; i++) {
        self->streams[i].blocked = 0;
    }
    ngtcp2_path_storage ps;
    ngtcp2_path_storage_zero(&ps);
    ngtcp2_pkt_info pi;
    int rv = 0;
    for (int packets = 0; packets < MAX_PACKETS_PER_FLUSH;) {
        SendStream *s = NULL;
        for (int i = 0; i < MAX_SEND_STREAMS; i++) {
            if (stream_pending(&self->streams[i])) {
                s = &self->streams[i];
                break;
            }
        }
        ngtcp2_vec vecs[MAX_VECS];
        size_t nvecs = 0, total = 0;
        uint32_t flags = NGTCP2_WRITE_STREAM_FLAG_NONE;
        int64_t stream_id = -1;
        if (s != NULL) {
            stream_id = s->id;
            flags |= NGTCP2_WRITE_STREAM_FLAG_MORE;
            size_t skip = s->cursor_done;
            for (Chunk *c = s->cursor; c != NULL && nvecs < MAX_VECS; c = c->next) {
                vecs[nvecs].base = c->data + skip;
                vecs[nvecs].len = c->len - skip;
                total += vecs[nvecs].len;
                nvecs++;
                skip = 0;
            }
            int everything = nvecs == 0 || vecs[nvecs - 1].base + vecs[nvecs - 1].len ==
                                               s->tail->data + s->tail->len;
            if (s->fin && everything) {
                flags |= NGTCP2_WRITE_STREAM_FLAG_FIN;
            }
        }
        ngtcp2_ssize consumed = -1;
        ngtcp2_ssize n = ngtcp2_conn_writev_stream(self->conn, &ps.path, &pi, self->out,
                                                   sizeof(self->out), &consumed, flags,
                                                   stream_id, vecs, nvecs, (ngtcp2_tstamp)now);
        if (s != NULL && consumed >= 0) {
            stream_advance(s, (size_t)consumed);
            if ((flags & NGTCP2_WRITE_STREAM_FLAG_FIN) && (size_t)consumed == total) {
                s->fin_sent = 1;
            }
        }
        if (n < 0) {
            if (n == NGTCP2_ERR_WRITE_MORE) {
                continue;
            }
            if (s != NULL && (n == NGTCP2_ERR_STREAM_DATA_BLOCKED ||
                              n == NGTCP2_ERR_STREAM_SHUT_WR ||
                              n == NGTCP2_ERR_STREAM_NOT_FOUND)) {
                s->blocked = 1;
                continue;
            }
            rv = (int)n;
            if (self->ccerr.error_code == 0) {
                ngtcp2_connection_close_error_set_transport_error_liberr(&self->ccerr, rv, NULL,
                                                                         0);
            }
            break;
        }
        if (n == 0) {
            break;
        }
        if (append_packet(self, out, &ps.path, (size_t)n) < 0) {
            Py_DECREF(out);
            return NULL;
        }
        packets++;
    }
    /* No ngtcp2_conn_update_pkt_tx_time(): that arms the pacing timer after every write, and
     * for one packet per 20 ms frame it only costs a wake-up per frame (pacing off). */
    PyObject *status = status_or_error(self, rv);
    if (status == NULL) {
        Py_DECREF(out);
        return NULL;
    }
    return Py_BuildValue("(NN)", status, out);
}

PyDoc_STRVAR(handle_expiry_doc,
             "handle_expiry(now) -> status: run ngtcp2's timers due at now (ns); flush() after.");

static PyObject *connection_handle_expiry(ConnectionObject *self, PyObject *args) {
    unsigned long long now;
    if (check_ready(self) < 0 || !PyArg_ParseTuple(args, "K", &now)) {
        return NULL;
    }
    int rv = ngtcp2_conn_handle_expiry(self->conn, (ngtcp2_tstamp)now);
    return status_or_error(self, rv);
}

PyDoc_STRVAR(open_uni_doc, "open_uni_stream() -> stream_id, or -1 when the peer allows none.");

static PyObject *connection_open_uni(ConnectionObject *self, PyObject *unused) {
    (void)unused;
    if (check_ready(self) < 0) {
        return NULL;
    }
    int64_t stream_id;
    int rv = ngtcp2_conn_open_uni_stream(self->conn, &stream_id, NULL);
    if (rv != 0) {
        return PyLong_FromLong(-1);
    }
    return PyLong_FromLongLong(stream_id);
}

PyDoc_STRVAR(send_stream_doc,
             "send_stream(stream_id, data, fin=False) -> bool\n\n"
             "Queue data on a stream (sent by the next flush()); False when no more streams\n"
             "can be written at once or the stream was already ended.");

static PyObject *connection_send_stream(ConnectionObject *self, PyObject *args,
                                        PyObject *kwargs) {
    static char *names[] = {"stream_id", "data", "fin", NULL};
    long long stream_id;
    Py_buffer data;
    int fin = 0;
    if (check_ready(self) < 0 ||
        !PyArg_ParseTupleAndKeywords(args, kwargs, "Ly*|p", names, &stream_id, &data, &fin)) {
        return NULL;
    }
    SendStream *s = find_stream(self, stream_id);
    if (s == NULL) {
        s = find_stream(self, -1);
        if (s == NULL) {
            PyBuffer_Release(&data);
            Py_RETURN_FALSE;
        }
        memset(s, 0, sizeof(*s));
        s->id = stream_id;
    }
    if (s->fin) {
        PyBuffer_Release(&data);
        Py_RETURN_FALSE;
    }
    if (data.len > 0) {
        Chunk *c = PyMem_Malloc(sizeof(Chunk) + (size_t)data.len);
        if (c == NULL) {
            PyBuffer_Release(&data);
            return PyErr_NoMemory();
        }
        c->next = NULL;
        c->offset = s->end;
        c->len = (size_t)data.len;
        memcpy(c->data, data.buf, (size_t)data.len);
        s->end += (uint64_t)data.len;
        if (s->tail != NULL) {
            s->tail->next = c;
        } else {
            s->head = c;
        }
        s->tail = c;
        if (s->cursor == NULL) {
            s->cursor = c;
            s->cursor_done = 0;
        }
    }
    s->fin = fin;
    PyBuffer_Release(&data);
    Py_RETURN_TRUE;
}

PyDoc_STRVAR(close_doc,
             "close(now, error_code=None, reason=b'') -> list of (datagram, (host, port))\n\n"
             "The CONNECTION_CLOSE to send: with error_code an application close (with the\n"
             "reason phrase), else the\n"
             "transport error that ended the connection (NO_ERROR if none). Empty when the\n"
             "connection is already closing or draining.");

static PyObject *connection_close(ConnectionObject *self, PyObject *args, PyObject *kwargs) {
    static char *names[] = {"now", "error_code", "reason", NULL};
    unsigned long long now;
    PyObject *code = Py_None;
    Py_buffer reason = {0};
    if (check_ready(self) < 0 ||
        !PyArg_ParseTupleAndKeywords(args, kwargs, "K|Oy*", names, &now, &code, &reason)) {
        return NULL;
    }
    PyObject *out = PyList_New(0);
    if (out == NULL || ngtcp2_conn_is_in_closing_period(self->conn) ||
        ngtcp2_conn_is_in_draining_period(self->conn)) {
        PyBuffer_Release(&reason);
        return out;
    }
    if (code != Py_None) {
        unsigned long long value = PyLong_AsUnsignedLongLong(code);
        if (PyErr_Occurred()) {
            PyBuffer_Release(&reason);
            Py_DECREF(out);
            return NULL;
        }
        /* ngtcp2 keeps the pointer until the packet is written, below. */
        size_t reason_len = reason.buf != NULL ? (size_t)reason.len : 0;
        if (reason_len > 1024) {
            reason_len = 1024;
        }
        ngtcp2_connection_close_error_set_application_error(
            &self->ccerr, value, reason_len ? reason.buf : NULL, reason_len);
    }
    ngtcp2_path_storage ps;
    ngtcp2_path_storage_zero(&ps);
    ngtcp2_pkt_info pi;
    ngtcp2_ssize n = ngtcp2_conn_write_connection_close(
        self->conn, &ps.path, &pi, self->out, sizeof(self->out), &self->ccerr, (ngtcp2_tstamp)now);
    self->ccerr.reason = NULL;
    self->ccerr.reasonlen = 0;
    PyBuffer_Release(&reason);
    if (n > 0 && append_packet(self, out, &ps.path, (size_t)n) < 0) {
        Py_DECREF(out);
        return NULL;
    }
    return out;
}

static PyObject *connection_expiry(ConnectionObject *self, void *closure) {
    (void)closure;
    if (check_ready(self) < 0) {
        return NULL;
    }
    ngtcp2_tstamp expiry = ngtcp2_conn_get_expiry(self->conn);
    if (expiry == UINT64_MAX) {
        Py_RETURN_NONE;
    }
    return PyLong_FromUnsignedLongLong(expiry);
}

static PyObject *connection_source_cids(ConnectionObject *self, void *closure) {
    (void)closure;
    if (check_ready(self) < 0) {
        return NULL;
    }
    ngtcp2_cid cids[16];
    size_t count = ngtcp2_conn_get_num_scid(self->conn);
    if (count > 16) {
        count = 16;
    }
    count = count ? ngtcp2_conn_get_scid(self->conn, cids) : 0;
    PyObject *list = PyList_New(0);
    for (size_t i = 0; list != NULL && i < count && i < 16; i++) {
        PyObject *cid = PyBytes_FromStringAndSize((const char *)cids[i].data,
                                                  (Py_ssize_t)cids[i].datalen);
        if (cid == NULL || PyList_Append(list, cid) < 0) {
            Py_XDECREF(cid);
            Py_CLEAR(list);
            break;
        }
        Py_DECREF(cid);
    }
    return list;
}

static PyObject *connection_handshake_completed(ConnectionObject *self, void *closure) {
    (void)closure;
    if (check_ready(self) < 0) {
        return NULL;
    }
    return PyBool_FromLong(ngtcp2_conn_get_handshake_completed(self->conn));
}

static PyObject *connection_closed(ConnectionObject *self, void *closure) {
    (void)closure;
    if (check_ready(self) < 0) {
        return NULL;
    }
    return PyBool_FromLong(ngtcp2_conn_is_in_closing_period(self->conn) ||
                           ngtcp2_conn_is_in_draining_period(self->conn));
}


/* -- client connections (the benchmark's load generator and tests; no certificate check) -- */

PyDoc_STRVAR(client_doc,
             "client(alpn, server_name, local, remote, now, cid_factory, cid_retired,\n"
             "       idle_timeout_ms) -> Connection\n\n"
             "A client connection that accepts any server certificate (for load generation):\n"
             "flush() writes its first flight. It acknowledges every packet at once.");

static PyObject *module_client(PyObject *module, PyObject *args, PyObject *kwargs) {
    (void)module;
    static char *names[] = {"alpn", "server_name", "local", "remote", "now", "cid_factory",
                            "cid_retired", "idle_timeout_ms", NULL};
    Py_buffer alpn;
    const char *server_name;
    PyObject *local, *remote, *factory, *retired;
    unsigned long long now, idle_ms;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "y*sOOKOOK", names, &alpn, &server_name,
                                     &local, &remote, &now, &factory, &retired, &idle_ms)) {
        return NULL;
    }
    ConnectionObject *self =
        (ConnectionObject *)PyType_GenericNew(&ConnectionType, NULL, NULL);
    if (self == NULL) {
        PyBuffer_Release(&alpn);
        return NULL;
    }
    if (alpn.len < 1 || alpn.len > 255 || !PyCallable_Check(factory) ||
        !PyCallable_Check(retired)) {
        PyErr_SetString(PyExc_ValueError, "alpn of 1..255 octets and callable CID hooks");
        goto fail;
    }
    if (connection_prepare(self, local, remote, factory, retired) < 0) {
        goto fail;
    }

    ngtcp2_callbacks callbacks;
    common_callbacks(&callbacks);
    callbacks.client_initial = ngtcp2_crypto_client_initial_cb;
    callbacks.recv_retry = ngtcp2_crypto_recv_retry_cb;
    ngtcp2_settings settings;
    ngtcp2_transport_params params;
    common_settings(&settings, &params, now, idle_ms);
    params.initial_max_streams_bidi = 0;
    params.initial_max_streams_uni = 16;

    uint8_t cid_bytes[26];
    gnutls_rnd(GNUTLS_RND_NONCE, cid_bytes, sizeof(cid_bytes));
    ngtcp2_cid dcid, scid;
    ngtcp2_cid_init(&dcid, cid_bytes, 18);
    ngtcp2_cid_init(&scid, cid_bytes + 18, 8);
    ngtcp2_path path = {
        {(ngtcp2_sockaddr *)&self->local, self->local_len},
        {(ngtcp2_sockaddr *)&self->remote, self->remote_len},
        NULL,
    };
    int rv = ngtcp2_conn_client_new(&self->conn, &dcid, &scid, &path, NGTCP2_PROTO_VER_V1,
                                    &callbacks, &settings, &params, NULL, self);
    if (rv != 0) {
        self->conn = NULL;
        PyErr_Format(PyExc_ValueError, "ngtcp2_conn_client_new: %s", ngtcp2_strerror(rv));
        goto fail;
    }
    rv = gnutls_certificate_allocate_credentials(&self->client_credentials);
    if (rv == 0) {
        rv = gnutls_init(&self->tls, GNUTLS_CLIENT | GNUTLS_NO_END_OF_EARLY_DATA);
    }
    if (rv == 0) {
        rv = ngtcp2_crypto_gnutls_configure_client_session(self->tls) == 0 ? 0 : -1;
    }
    if (rv == 0) {
        rv = gnutls_priority_set_direct(self->tls, TLS_PRIORITY, NULL);
    }
    if (rv == 0) {
        rv = gnutls_credentials_set(self->tls, GNUTLS_CRD_CERTIFICATE, self->client_credentials);
    }
    if (rv == 0) {
        gnutls_datum_t alpn_datum = {(unsigned char *)alpn.buf, (unsigned)alpn.len};
        rv = gnutls_alpn_set_protocols(self->tls, &alpn_datum, 1, GNUTLS_ALPN_MANDATORY);
    }
    if (rv == 0) {
        rv = gnutls_server_name_set(self->tls, GNUTLS_NAME_DNS, server_name, strlen(server_name));
    }
    if (rv != 0) {
        PyErr_Format(PyExc_ValueError, "gnutls client setup failed: %s", gnutls_strerror(rv));
        goto fail;
    }
    attach_tls(self);
    PyBuffer_Release(&alpn);
    return (PyObject *)self;
fail:
    PyBuffer_Release(&alpn);
    Py_DECREF(self);
    return NULL;
}

PyDoc_STRVAR(open_bidi_doc, "open_bidi_stream() -> stream_id, or -1 when the peer allows none.");

static PyObject *connection_open_bidi(ConnectionObject *self, PyObject *unused) {
    (void)unused;
    if (check_ready(self) < 0) {
        return NULL;
    }
    int64_t stream_id;
    if (ngtcp2_conn_open_bidi_stream(self->conn, &stream_id, NULL) != 0) {
        return PyLong_FromLong(-1);
    }
    return PyLong_FromLongLong(stream_id);
}

PyDoc_STRVAR(reset_stream_doc,
             "reset_stream(stream_id, error_code) -> bool\n\n"
             "Abort sending on a stream (RESET_STREAM) and drop what is queued on it; False\n"
             "when ngtcp2 knows no such stream (already closed).");

static PyObject *connection_reset_stream(ConnectionObject *self, PyObject *args) {
    long long stream_id;
    unsigned long long code;
    if (check_ready(self) < 0 || !PyArg_ParseTuple(args, "LK", &stream_id, &code)) {
        return NULL;
    }
    SendStream *s = find_stream(self, stream_id);
    if (s != NULL) {
        /* Nothing more goes out on it: what ngtcp2 still holds pointers to stays until the
         * stream closes (stream_close frees it). */
        s->cursor = NULL;
        s->cursor_done = 0;
        s->fin = s->fin_sent = 1;
        s->reset = 1;
    }
    return PyBool_FromLong(ngtcp2_conn_shutdown_stream_write(self->conn, stream_id, code) == 0);
}

PyDoc_STRVAR(stop_sending_doc,
             "stop_sending(stream_id, error_code) -> bool\n\n"
             "Ask the peer to stop sending on a stream (STOP_SENDING); False when ngtcp2 knows\n"
             "no such stream.");

static PyObject *connection_stop_sending(ConnectionObject *self, PyObject *args) {
    long long stream_id;
    unsigned long long code;
    if (check_ready(self) < 0 || !PyArg_ParseTuple(args, "LK", &stream_id, &code)) {
        return NULL;
    }
    return PyBool_FromLong(ngtcp2_conn_shutdown_stream_read(self->conn, stream_id, code) == 0);
}

PyDoc_STRVAR(send_offsets_doc,
             "send_offsets(stream_id) -> (acknowledged, written)\n\n"
             "Stream offsets of what this side sent: everything before the first is\n"
             "acknowledged; (0, 0) for a stream closed or never written.");

static PyObject *connection_send_offsets(ConnectionObject *self, PyObject *args) {
    long long stream_id;
    if (check_ready(self) < 0 || !PyArg_ParseTuple(args, "L", &stream_id)) {
        return NULL;
    }
    SendStream *s = stream_id >= 0 ? find_stream(self, stream_id) : NULL;
    if (s == NULL) {
        return Py_BuildValue("(ii)", 0, 0);
    }
    return Py_BuildValue("(KK)", (unsigned long long)s->acked, (unsigned long long)s->end);
}

PyDoc_STRVAR(take_aborts_doc,
             "take_aborts() -> list of (stream_id, error_code, reset)\n\n"
             "The peer's RESET_STREAM (reset True) and STOP_SENDING (False) since the last call.\n"
             "A STOP_SENDING is reported for this side's unidirectional streams only, once\n"
             "ngtcp2's answering RESET_STREAM is acknowledged (ngtcp2 0.12 reports no more).");

static PyObject *connection_take_aborts(ConnectionObject *self, PyObject *unused) {
    (void)unused;
    PyObject *aborts = self->aborts;
    if (aborts == NULL) {
        return PyList_New(0);
    }
    self->aborts = NULL;
    return aborts;
}

static PyObject *connection_rtt(ConnectionObject *self, void *closure) {
    (void)closure;
    if (check_ready(self) < 0) {
        return NULL;
    }
    ngtcp2_conn_stat stat;
    ngtcp2_conn_get_conn_stat(self->conn, &stat);
    if (stat.latest_rtt == 0) {
        Py_RETURN_NONE;
    }
    return Py_BuildValue("(KKK)", (unsigned long long)stat.latest_rtt,
                         (unsigned long long)stat.smoothed_rtt, (unsigned long long)stat.min_rtt);
}

static PyObject *connection_peer_close(ConnectionObject *self, void *closure) {
    (void)closure;
    if (check_ready(self) < 0) {
        return NULL;
    }
    if (!ngtcp2_conn_is_in_draining_period(self->conn)) {
        Py_RETURN_NONE;
    }
    ngtcp2_connection_close_error ccerr;
    ngtcp2_conn_get_connection_close_error(self->conn, &ccerr);
    /* "y#" makes None of a NULL pointer: no reason phrase is an empty one. */
    const uint8_t *reason = ccerr.reason != NULL ? ccerr.reason : (const uint8_t *)"";
    Py_ssize_t reasonlen = ccerr.reason != NULL ? (Py_ssize_t)ccerr.reasonlen : 0;
    return Py_BuildValue(
        "(Ky#O)", (unsigned long long)ccerr.error_code, reason, reasonlen,
        ccerr.type == NGTCP2_CONNECTION_CLOSE_ERROR_CODE_TYPE_APPLICATION ? Py_True : Py_False);
}

static PyMethodDef connection_methods[] = {
    {"reset_stream", (PyCFunction)connection_reset_stream, METH_VARARGS, reset_stream_doc},
    {"stop_sending", (PyCFunction)connection_stop_sending, METH_VARARGS, stop_sending_doc},
    {"send_offsets", (PyCFunction)connection_send_offsets, METH_VARARGS, send_offsets_doc},
    {"take_aborts", (PyCFunction)connection_take_aborts, METH_NOARGS, take_aborts_doc},
    {"receive", (PyCFunction)connection_receive, METH_VARARGS, receive_doc},
    {"flush", (PyCFunction)connection_flush, METH_VARARGS, flush_doc},
    {"handle_expiry", (PyCFunction)connection_handle_expiry, METH_VARARGS, handle_expiry_doc},
    {"open_uni_stream", (PyCFunction)connection_open_uni, METH_NOARGS, open_uni_doc},
    {"open_bidi_stream", (PyCFunction)connection_open_bidi, METH_NOARGS, open_bidi_doc},
    {"send_stream", (PyCFunction)(void (*)(void))connection_send_stream,
     METH_VARARGS | METH_KEYWORDS, send_stream_doc},
    {"close", (PyCFunction)(void (*)(void))connection_close, METH_VARARGS | METH_KEYWORDS,
     close_doc},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef connection_getset[] = {
    {"expiry", (getter)connection_expiry, NULL, "ngtcp2's next timer (ns), or None.", NULL},
    {"source_cids", (getter)connection_source_cids, NULL, "The CIDs this side uses now.", NULL},
    {"handshake_completed", (getter)connection_handshake_completed, NULL,
     "Whether the TLS handshake completed.", NULL},
    {"closed", (getter)connection_closed, NULL, "In the closing or draining period.", NULL},
    {"rtt", (getter)connection_rtt, NULL,
     "(latest, smoothed, minimum) RTT in ns, or None before the first sample.", NULL},
    {"peer_close", (getter)connection_peer_close, NULL,
     "(error_code, reason, is_application) of the peer's CONNECTION_CLOSE (draining), or None.",
     NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject ConnectionType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "quicvoice._ngtcp2.Connection",
    .tp_basicsize = sizeof(ConnectionObject),
    .tp_dealloc = (destructor)connection_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "One ngtcp2 server connection, sans-I/O.",
    .tp_methods = connection_methods,
    .tp_getset = connection_getset,
    .tp_init = (initproc)connection_init,
    .tp_new = PyType_GenericNew,
};

/* -- module functions -------------------------------------------------------------------------- */

PyDoc_STRVAR(accept_doc,
             "accept(datagram) -> (version, dcid, scid) when ngtcp2 would open a connection\n"
             "for this first packet (a client Initial of a supported version), else None.");

static PyObject *module_accept(PyObject *module, PyObject *args) {
    (void)module;
    Py_buffer data;
    if (!PyArg_ParseTuple(args, "y*", &data)) {
        return NULL;
    }
    ngtcp2_pkt_hd hd;
    int rv = ngtcp2_accept(&hd, data.buf, (size_t)data.len);
    PyBuffer_Release(&data);
    if (rv != 0) {
        Py_RETURN_NONE;
    }
    return Py_BuildValue("(ky#y#)", (unsigned long)hd.version, hd.dcid.data,
                         (Py_ssize_t)hd.dcid.datalen, hd.scid.data, (Py_ssize_t)hd.scid.datalen);
}

PyDoc_STRVAR(stateless_reset_doc,
             "stateless_reset(token, size) -> a stateless reset packet of size octets\n"
             "(at least 21), ending with token.");

static PyObject *module_stateless_reset(PyObject *module, PyObject *args) {
    (void)module;
    Py_buffer token;
    Py_ssize_t size;
    if (!PyArg_ParseTuple(args, "y*n", &token, &size)) {
        return NULL;
    }
    if (token.len != NGTCP2_STATELESS_RESET_TOKENLEN || size < 21 || size > 1200) {
        PyBuffer_Release(&token);
        PyErr_SetString(PyExc_ValueError, "a 16-octet token and a size of 21..1200");
        return NULL;
    }
    uint8_t packet[1200], random[1200];
    size_t random_len = (size_t)size - NGTCP2_STATELESS_RESET_TOKENLEN;
    gnutls_rnd(GNUTLS_RND_NONCE, random, random_len);
    ngtcp2_ssize n = ngtcp2_pkt_write_stateless_reset(packet, sizeof(packet), token.buf, random,
                                                      random_len);
    PyBuffer_Release(&token);
    if (n < 0) {
        PyErr_Format(PyExc_ValueError, "ngtcp2_pkt_write_stateless_reset: %s",
                     ngtcp2_strerror((int)n));
        return NULL;
    }
    return PyBytes_FromStringAndSize((const char *)packet, n);
}

static PyObject *module_strerror(PyObject *module, PyObject *args) {
    (void)module;
    int code;
    if (!PyArg_ParseTuple(args, "i", &code)) {
        return NULL;
    }
    return PyUnicode_FromString(ngtcp2_strerror(code));
}

/* The forwarder's encapsulation (quicvoice/encapsulation.py, specs/forwarder.md): octet 0
 * 0x71, octet 1 the family (4 or 6), octets 2-3 the client's port (never 0), then its 4- or
 * 16-octet address. The header's length, or 0 when data does not start with a valid one (the
 * general path in Python then counts and drops it). */
#define ENCAPSULATION_MAGIC_VERSION 0x71
static Py_ssize_t encapsulation_header(const uint8_t *data, Py_ssize_t size) {
    if (size < 8 || data[0] != ENCAPSULATION_MAGIC_VERSION || (data[2] == 0 && data[3] == 0)) {
        return 0;
    }
    if (data[1] == 4) {
        return 8;
    }
    if (data[1] == 6 && size >= 20) {
        return 20;
    }
    return 0;
}

/* The (host, port) tuple of the client an encapsulation header (checked) names. */
static PyObject *encapsulated_client(const uint8_t *data) {
    char text[INET6_ADDRSTRLEN];
    int port = data[2] << 8 | data[3];
    if (data[1] == 4) {
        inet_ntop(AF_INET, data + 4, text, sizeof(text));
    } else {
        inet_ntop(AF_INET6, data + 4, text, sizeof(text));
    }
    return Py_BuildValue("(si)", text, port);
}

PyDoc_STRVAR(dispatch_doc,
             "dispatch(datagrams, routes, cid_len, now, forwarder) -> (delivered, others)\n\n"
             "Hand each (datagram, remote) of datagrams that is a short-header packet whose\n"
             "cid_len-octet DCID routes maps to a Connection to that connection, as its\n"
             "receive(datagram, remote, now) would. A datagram from the forwarder's (host, port)\n"
             "is unwrapped first (its encapsulation names the client, the connection's remote).\n"
             "delivered lists (connection, (status, events), remote, forwarded) in order.\n"
             "Everything else (long headers, unknown CIDs, invalid encapsulations) is left in\n"
             "others, in order, for the caller's general path. A Python error inside a\n"
             "connection's callbacks is reported as unraisable and fails that connection (status\n"
             "ERR_CALLBACK_FAILURE).");

static PyObject *module_dispatch(PyObject *module, PyObject *args) {
    (void)module;
    PyObject *datagrams, *routes, *forwarder;
    Py_ssize_t cid_len;
    unsigned long long now;
    if (!PyArg_ParseTuple(args, "O!O!nKO", &PyList_Type, &datagrams, &PyDict_Type, &routes,
                          &cid_len, &now, &forwarder)) {
        return NULL;
    }
    if (cid_len < 1 || cid_len > NGTCP2_MAX_CIDLEN) {
        PyErr_SetString(PyExc_ValueError, "cid_len must be 1..20");
        return NULL;
    }
    PyObject *forwarder_host = NULL, *forwarder_port = NULL;
    if (forwarder != Py_None) {
        if (!PyTuple_Check(forwarder) || PyTuple_GET_SIZE(forwarder) < 2) {
            PyErr_SetString(PyExc_TypeError, "forwarder is a (host, port) tuple or None");
            return NULL;
        }
        forwarder_host = PyTuple_GET_ITEM(forwarder, 0);
        forwarder_port = PyTuple_GET_ITEM(forwarder, 1);
    }
    PyObject *delivered = PyList_New(0);
    PyObject *others = PyList_New(0);
    if (delivered == NULL || others == NULL) {
        goto fail;
    }
    Py_ssize_t count = PyList_GET_SIZE(datagrams);
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *item = PyList_GET_ITEM(datagrams, i);
        if (!PyTuple_Check(item) || PyTuple_GET_SIZE(item) != 2 ||
            !PyBytes_Check(PyTuple_GET_ITEM(item, 0)) || !PyTuple_Check(PyTuple_GET_ITEM(item, 1)) ||
            PyTuple_GET_SIZE(PyTuple_GET_ITEM(item, 1)) < 2) {
            PyErr_SetString(PyExc_TypeError, "datagrams is a list of (bytes, (host, port))");
            goto fail;
        }
        PyObject *data = PyTuple_GET_ITEM(item, 0);
        PyObject *remote = PyTuple_GET_ITEM(item, 1);
        const uint8_t *octets = (const uint8_t *)PyBytes_AS_STRING(data);
        Py_ssize_t size = PyBytes_GET_SIZE(data);
        int from_forwarder = 0;
        if (forwarder_host != NULL) {
            int same = PyObject_RichCompareBool(PyTuple_GET_ITEM(remote, 1), forwarder_port, Py_EQ);
            if (same > 0) {
                same = PyObject_RichCompareBool(PyTuple_GET_ITEM(remote, 0), forwarder_host, Py_EQ);
            }
            if (same < 0) {
                goto fail;
            }
            from_forwarder = same;
        }
        PyObject *client = NULL; /* new reference: the client named by an encapsulation */
        if (from_forwarder) {
            Py_ssize_t header = encapsulation_header(octets, size);
            if (header > 0) {
                client = encapsulated_client(octets);
                if (client == NULL) {
                    goto fail;
                }
                octets += header;
                size -= header;
            }
        }
        ConnectionObject *conn = NULL;
        if ((!from_forwarder || client != NULL) && size > cid_len && (octets[0] & 0x80) == 0) {
            PyObject *cid = PyBytes_FromStringAndSize((const char *)octets + 1, cid_len);
            if (cid == NULL) {
                Py_XDECREF(client);
                goto fail;
            }
            PyObject *found = PyDict_GetItemWithError(routes, cid); /* borrowed */
            Py_DECREF(cid);
            if (found == NULL && PyErr_Occurred()) {
                Py_XDECREF(client);
                goto fail;
            }
            if (found != NULL && Py_IS_TYPE(found, &ConnectionType) &&
                ((ConnectionObject *)found)->conn != NULL) {
                conn = (ConnectionObject *)found;
            }
        }
        if (conn == NULL) {
            Py_XDECREF(client);
            if (PyList_Append(others, item) < 0) {
                goto fail;
            }
            continue;
        }
        PyObject *peer = client != NULL ? client : remote;
        Py_INCREF(conn); /* a callback may drop the routes' reference */
        PyObject *result = receive_datagram(conn, octets, (size_t)size, peer, now);
        if (result == NULL) {
            PyErr_WriteUnraisable((PyObject *)conn);
            result = Py_BuildValue("(iN)", NGTCP2_ERR_CALLBACK_FAILURE, PyList_New(0));
            if (result == NULL) {
                Py_DECREF(conn);
                Py_XDECREF(client);
                goto fail;
            }
        }
        PyObject *entry = Py_BuildValue("(NNOO)", (PyObject *)conn, result, peer,
                                        client != NULL ? Py_True : Py_False);
        Py_XDECREF(client);
        if (entry == NULL || PyList_Append(delivered, entry) < 0) {
            Py_XDECREF(entry);
            goto fail;
        }
        Py_DECREF(entry);
    }
    return Py_BuildValue("(NN)", delivered, others);
fail:
    Py_XDECREF(delivered);
    Py_XDECREF(others);
    return NULL;
}

static PyMethodDef module_methods[] = {
    {"accept", module_accept, METH_VARARGS, accept_doc},
    {"stateless_reset", module_stateless_reset, METH_VARARGS, stateless_reset_doc},
    {"strerror", module_strerror, METH_VARARGS, "ngtcp2's text for an error code."},
    {"dispatch", module_dispatch, METH_VARARGS, dispatch_doc},
    {"client", (PyCFunction)(void (*)(void))module_client, METH_VARARGS | METH_KEYWORDS,
     client_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef ngtcp2_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "quicvoice._ngtcp2",
    .m_doc = "ngtcp2 + gnutls as a sans-I/O QUIC server connection (prototype engine).",
    .m_size = -1,
    .m_methods = module_methods,
};

PyMODINIT_FUNC PyInit__ngtcp2(void) {
    if (PyType_Ready(&ContextType) < 0 || PyType_Ready(&ConnectionType) < 0) {
        return NULL;
    }
    PyObject *module = PyModule_Create(&ngtcp2_module);
    if (module == NULL) {
        return NULL;
    }
    Py_INCREF(&ContextType);
    Py_INCREF(&ConnectionType);
    if (PyModule_AddObject(module, "ServerContext", (PyObject *)&ContextType) < 0 ||
        PyModule_AddObject(module, "Connection", (PyObject *)&ConnectionType) < 0 ||
        PyModule_AddIntConstant(module, "ABI_VERSION", ABI_VERSION) < 0 ||
        PyModule_AddIntConstant(module, "ERR_DRAINING", NGTCP2_ERR_DRAINING) < 0 ||
        PyModule_AddIntConstant(module, "ERR_CLOSING", NGTCP2_ERR_CLOSING) < 0 ||
        PyModule_AddIntConstant(module, "ERR_DROP_CONN", NGTCP2_ERR_DROP_CONN) < 0 ||
        PyModule_AddIntConstant(module, "ERR_IDLE_CLOSE", NGTCP2_ERR_IDLE_CLOSE) < 0 ||
        PyModule_AddIntConstant(module, "ERR_CALLBACK_FAILURE", NGTCP2_ERR_CALLBACK_FAILURE) < 0 ||
        PyModule_AddStringConstant(module, "NGTCP2_VERSION", NGTCP2_VERSION) < 0) {
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
