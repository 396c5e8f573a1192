/* The forwarder's native fast path (lb._native): decide and move the common datagram in C.
 *
 * Two types:
 *
 * Tables  the fast path's view of one Router (lb/native_path.py builds it from the Router's
 *         fast_* tables): the QUIC-LB configurations by config bits, the live backends by
 *         server ID, the configured backends by source address, and per-backend counters.
 *         Sans-I/O: uplink()/downlink() decide one datagram (exposed for the tests and the
 *         fuzz targets), decode() reads a CID's server ID.
 * Relay   one pump's loop: recvmmsg (MSG_WAITFORONE: a batch is what is queued, one datagram
 *         when one is in flight; see receive_batch), the decision of each datagram, sendmmsg
 *         (with UDP GSO for runs of equal-sized datagrams to one address). It runs without the
 *         GIL and returns to Python only when a batch holds a datagram the fast path does not
 *         take (Python routes it with the Router; the batch is then sent in order), when a
 *         signal interrupts the wait (or a receive timeout, where the socket has one), or
 *         when the pump's next tick is due.
 *
 * The fast path takes exactly what lb/python_path.py takes (tests/lb/test_lb_native_path.py):
 * uplink, a short header of 21..65487 octets from a client with a non-zero port whose CID
 * decodes to a live backend; downlink, an IPv4 encapsulation header with a non-zero port that
 * is not a probe answer, from a configured backend. IPv4 sockets only.
 *
 * AES-128 is this file's own AES-NI code (x86-64 with the aes flag, checked at run time);
 * elsewhere the AES configurations are left to Python, whose decisions are the same.
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <sched.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <time.h>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define QV_X86 1
#define QV_AESNI __attribute__((target("aes,sse2")))
#else
#define QV_X86 0
#endif

#ifndef SOL_UDP
#define SOL_UDP 17
#endif
#ifndef UDP_SEGMENT
#define UDP_SEGMENT 103 /* linux/udp.h: the GSO segment size of one sendmsg */
#endif
#ifndef MSG_WAITFORONE
#define MSG_WAITFORONE 0x10000
#endif

/* Bumped whenever the Python side must change with this file: a stale build is not used. */
#define ABI_VERSION 3

#define CONFIG_SLOTS 8
#define MAX_CID_LEN 20         /* RFC 9000 §17.2 */
#define MAX_BLOCK_LEN 19       /* server ID + nonce, draft-21 §5 */
#define MAX_SERVER_ID_LEN 15   /* 19 - the shortest nonce (4) */
#define MIN_SHORT_HEADER_LEN 21 /* RFC 9000 §10.3 */
#define MAX_CLIENT_DATAGRAM 65487 /* 65507 - the IPv6 header: a wrapped one always fits */
#define LONG_HEADER_BIT 0x80
#define HEADER_LEN 8           /* the IPv4 encapsulation header (lb/encapsulation.py) */
#define MAGIC_VERSION 0x71
#define ECN_MASK 0x03          /* the ECN bits of the TOS octet (RFC 3168 §5) */
#define FAMILY_IPV4 4
#define SLOT_LEN 65536         /* more than any UDP payload: nothing is truncated */
/* Receive slots: room for the header in front, and a stride that is not a multiple of 4 KiB,
 * so that the first octets of a batch's datagrams do not share cache sets. */
#define SLOT_STRIDE (HEADER_LEN + SLOT_LEN + 5 * 64)
#define MAX_BATCH 64
#define DEFAULT_BATCH 64
/* UDP GSO: at most this many segments, and octets, in one message (linux UDP_MAX_SEGMENTS
 * is 64 on older kernels; 0xFFFF minus the IPv4 and UDP headers). */
#define MAX_GSO_SEGMENTS 64
#define MAX_GSO_OCTETS 65507
/* A socket whose GSO sends fail this often (then succeed one by one) stops trying GSO. */
#define MAX_GSO_FAILURES 8
/* After a receive that returned one datagram the loop takes the next with recvfrom; every
 * PROBE_EVERY-th of those is a recvmmsg instead, which goes back to batches if it finds more. */
#define PROBE_EVERY 16
#define TRANSIENT_RETRIES 3
#define SEND_WAIT_MS 1
#define ERRNO_SLOTS 256

enum { ALG_NONE = 0, ALG_PLAINTEXT = 1, ALG_SINGLE_PASS = 2, ALG_FOUR_PASS = 3 };
enum { STATUS_IDLE = 0, STATUS_INTERRUPTED = 1, STATUS_TICK = 2, STATUS_SLOW = 3, STATUS_ERROR = 4 };
enum { KIND_SLOW = 0, KIND_FAST = 1, KIND_SEND = 2, KIND_REPLY = 3, KIND_NONE = 4 };

static int aesni_usable = 0;

/* ---- AES-128 (FIPS-197) with AES-NI ------------------------------------------------------ */

typedef struct {
    uint8_t encrypt[11][16]; /* round keys */
    uint8_t decrypt[11][16]; /* the equivalent inverse cipher's round keys */
} aes128;

#if QV_X86
QV_AESNI static inline __m128i expand_round(__m128i key, __m128i assist)
{
    assist = _mm_shuffle_epi32(assist, 0xff);
    key = _mm_xor_si128(key, _mm_slli_si128(key, 4));
    key = _mm_xor_si128(key, _mm_slli_si128(key, 4));
    key = _mm_xor_si128(key, _mm_slli_si128(key, 4));
    return _mm_xor_si128(key, assist);
}

#define EXPAND(i, rcon)                                                        \
    k = expand_round(k, _mm_aeskeygenassist_si128(k, rcon));                   \
    _mm_storeu_si128((__m128i *)aes->encrypt[i], k)

QV_AESNI static void aes128_init(aes128 *aes, const uint8_t *key)
{
    __m128i k = _mm_loadu_si128((const __m128i *)key);
    _mm_storeu_si128((__m128i *)aes->encrypt[0], k);
    EXPAND(1, 0x01); EXPAND(2, 0x02); EXPAND(3, 0x04); EXPAND(4, 0x08); EXPAND(5, 0x10);
    EXPAND(6, 0x20); EXPAND(7, 0x40); EXPAND(8, 0x80); EXPAND(9, 0x1b); EXPAND(10, 0x36);
    memcpy(aes->decrypt[0], aes->encrypt[10], 16);
    for (int i = 1; i < 10; i++) {
        __m128i rk = _mm_loadu_si128((const __m128i *)aes->encrypt[10 - i]);
        _mm_storeu_si128((__m128i *)aes->decrypt[i], _mm_aesimc_si128(rk));
    }
    memcpy(aes->decrypt[10], aes->encrypt[0], 16);
}
#undef EXPAND

QV_AESNI static inline void aes128_encrypt(const aes128 *aes, const uint8_t *in, uint8_t *out)
{
    __m128i x = _mm_xor_si128(_mm_loadu_si128((const __m128i *)in),
                              _mm_loadu_si128((const __m128i *)aes->encrypt[0]));
    for (int i = 1; i < 10; i++)
        x = _mm_aesenc_si128(x, _mm_loadu_si128((const __m128i *)aes->encrypt[i]));
    x = _mm_aesenclast_si128(x, _mm_loadu_si128((const __m128i *)aes->encrypt[10]));
    _mm_storeu_si128((__m128i *)out, x);
}

QV_AESNI static inline void aes128_decrypt(const aes128 *aes, const uint8_t *in, uint8_t *out)
{
    __m128i x = _mm_xor_si128(_mm_loadu_si128((const __m128i *)in),
                              _mm_loadu_si128((const __m128i *)aes->decrypt[0]));
    for (int i = 1; i < 10; i++)
        x = _mm_aesdec_si128(x, _mm_loadu_si128((const __m128i *)aes->decrypt[i]));
    x = _mm_aesdeclast_si128(x, _mm_loadu_si128((const __m128i *)aes->decrypt[10]));
    _mm_storeu_si128((__m128i *)out, x);
}
#else
static void aes128_init(aes128 *aes, const uint8_t *key) { (void)aes; (void)key; }
static inline void aes128_encrypt(const aes128 *aes, const uint8_t *in, uint8_t *out)
{
    (void)aes; (void)in; memset(out, 0, 16);
}
static inline void aes128_decrypt(const aes128 *aes, const uint8_t *in, uint8_t *out)
{
    (void)aes; (void)in; memset(out, 0, 16);
}
#endif

/* ---- QUIC-LB decoding (draft-ietf-quic-load-balancers-21 §5) ----------------------------- */

typedef struct {
    uint8_t algorithm;  /* ALG_* */
    uint8_t native;     /* 0: left to Python (an AES configuration without AES-NI here) */
    uint8_t server_id_len;
    uint8_t block_len;  /* server ID + nonce */
    uint8_t half;       /* four-pass: octets of each half */
    uint8_t odd;        /* four-pass: the halves share the middle octet */
    aes128 aes;
} cid_config;

/* What decode_server_id found. */
#define DECODE_NONE 0    /* no server ID: unroutable, unknown config, too short */
#define DECODE_PYTHON -1 /* this configuration is decoded in Python only */

/* draft-21 §5.4.2.2: AES-ECB of (half || zeros || block length || pass), first `half` octets
 * XORed into `target`, then the target half masked (odd lengths share the middle octet). */
static inline void four_pass_round(const cid_config *c, const uint8_t *input, int pass,
                                   uint8_t *target, int is_left)
{
    uint8_t block[16] = {0}, out[16];
    memcpy(block, input, c->half);
    block[14] = c->block_len;
    block[15] = (uint8_t)pass;
    aes128_encrypt(&c->aes, block, out);
    for (int i = 0; i < c->half; i++)
        target[i] ^= out[i];
    if (c->odd) {
        if (is_left)
            target[c->half - 1] &= 0xF0;
        else
            target[0] &= 0x0F;
    }
}

/* The server ID of a four-pass block: three passes when the left half holds all of it. */
static int four_pass_server_id(const cid_config *c, const uint8_t *block, uint8_t *out)
{
    int length = c->block_len, half = c->half;
    uint8_t left[16], right[16];
    memcpy(left, block, half);
    memcpy(right, block + length - half, half);
    if (c->odd) {
        left[half - 1] &= 0xF0;
        right[0] &= 0x0F;
    }
    four_pass_round(c, right, 4, left, 1);
    four_pass_round(c, left, 3, right, 0);
    four_pass_round(c, right, 2, left, 1);
    if (c->server_id_len <= length / 2) {
        memcpy(out, left, c->server_id_len);
        return c->server_id_len;
    }
    four_pass_round(c, left, 1, right, 0);
    uint8_t joined[32];
    if (c->odd) {
        memcpy(joined, left, half - 1);
        joined[half - 1] = (uint8_t)((left[half - 1] & 0xF0) | (right[0] & 0x0F));
        memcpy(joined + half, right + 1, half - 1);
    } else {
        memcpy(joined, left, half);
        memcpy(joined + half, right, half);
    }
    memcpy(out, joined, c->server_id_len);
    return c->server_id_len;
}

/* The server ID in `cid` (its first octet included) into `out`: its length, DECODE_NONE or
 * DECODE_PYTHON. Exactly LoadBalancerDecoder.decode where that returns octets. */
static inline int decode_server_id(const cid_config *configs, const uint8_t *cid, size_t len,
                                   uint8_t *out)
{
    if (!len)
        return DECODE_NONE;
    const cid_config *c = &configs[cid[0] >> 5];
    if (c->algorithm == ALG_NONE || len < (size_t)1 + c->block_len)
        return DECODE_NONE;
    if (!c->native)
        return DECODE_PYTHON;
    const uint8_t *block = cid + 1;
    switch (c->algorithm) {
    case ALG_PLAINTEXT:
        memcpy(out, block, c->server_id_len);
        return c->server_id_len;
    case ALG_SINGLE_PASS: {
        uint8_t plain[16];
        aes128_decrypt(&c->aes, block, plain);
        memcpy(out, plain, c->server_id_len);
        return c->server_id_len;
    }
    default:
        return four_pass_server_id(c, block, out);
    }
}

/* ---- Tables --------------------------------------------------------------------------- */

typedef struct {
    uint32_t index; /* + 1; 0: empty */
    uint8_t len;
    uint8_t server_id[MAX_SERVER_ID_LEN];
} server_slot;

typedef struct {
    uint32_t index; /* + 1; 0: empty */
    uint64_t key;   /* port (network order) << 32 | IPv4 address (network order) */
} source_slot;

typedef struct {
    uint64_t packets;
    uint64_t octets;
} counts;

typedef struct {
    PyObject_HEAD
    cid_config configs[CONFIG_SLOTS];
    /* Live backends: where their datagrams go, and what the fast path sent them. */
    Py_ssize_t backend_count;
    struct sockaddr_in *backend_addresses;
    counts *backend_counts;
    server_slot *server_ids;
    size_t server_ids_mask;
    /* Configured backends by source address, and what the fast path relayed from them. */
    Py_ssize_t source_count;
    counts *source_counts;
    source_slot *sources;
    size_t sources_mask;
    uint8_t probe[6]; /* port and address of the probe answers' header */
    int aes;          /* every AES configuration is decoded here */
} TablesObject;

static inline uint32_t hash_octets(const uint8_t *data, size_t len)
{
    uint32_t h = 2166136261u; /* FNV-1a */
    for (size_t i = 0; i < len; i++)
        h = (h ^ data[i]) * 16777619u;
    return h;
}

static inline uint32_t hash_key(uint64_t key)
{
    key ^= key >> 33;
    key *= 0xff51afd7ed558ccdull;
    key ^= key >> 33;
    return (uint32_t)key;
}

static size_t table_size(Py_ssize_t count)
{
    size_t size = 8;
    while (size < (size_t)count * 2)
        size <<= 1;
    return size;
}

static inline Py_ssize_t find_server_id(const TablesObject *t, const uint8_t *id, int len)
{
    size_t i = hash_octets(id, (size_t)len) & t->server_ids_mask;
    for (;;) {
        const server_slot *s = &t->server_ids[i];
        if (!s->index)
            return -1;
        if (s->len == len && !memcmp(s->server_id, id, (size_t)len))
            return (Py_ssize_t)s->index - 1;
        i = (i + 1) & t->server_ids_mask;
    }
}

static inline Py_ssize_t find_source(const TablesObject *t, uint64_t key)
{
    size_t i = hash_key(key) & t->sources_mask;
    for (;;) {
        const source_slot *s = &t->sources[i];
        if (!s->index)
            return -1;
        if (s->key == key)
            return (Py_ssize_t)s->index - 1;
        i = (i + 1) & t->sources_mask;
    }
}

static inline uint64_t source_key(uint16_t port, uint32_t address)
{
    return (uint64_t)port << 32 | address;
}

/* The live backend the fast path forwards this client datagram to, or -1 (Python decides). */
static inline Py_ssize_t decide_uplink(const TablesObject *t, const uint8_t *d, size_t len,
                                       uint16_t port)
{
    if (len < MIN_SHORT_HEADER_LEN || len > MAX_CLIENT_DATAGRAM || d[0] & LONG_HEADER_BIT || !port)
        return -1;
    uint8_t server_id[MAX_SERVER_ID_LEN + 16];
    int found = decode_server_id(t->configs, d + 1, MAX_CID_LEN, server_id);
    if (found <= 0)
        return -1;
    return find_server_id(t, server_id, found);
}

/* The configured backend this datagram comes from if the fast path relays it, or -1. */
static inline Py_ssize_t decide_downlink(const TablesObject *t, const uint8_t *d, size_t len,
                                         uint16_t source_port, uint32_t source_address)
{
    if (len <= HEADER_LEN || d[0] != MAGIC_VERSION || d[1] != FAMILY_IPV4 || !(d[2] | d[3]))
        return -1;
    if (!memcmp(d + 2, t->probe, 6))
        return -1;
    return find_source(t, source_key(source_port, source_address));
}

static int parse_port_and_address(PyObject *item, uint16_t *port, uint32_t *address)
{
    Py_buffer view;
    if (PyObject_GetBuffer(item, &view, PyBUF_SIMPLE) < 0)
        return -1;
    if (view.len != 6) {
        PyBuffer_Release(&view);
        PyErr_SetString(PyExc_ValueError, "a port and IPv4 address is 6 octets");
        return -1;
    }
    memcpy(port, view.buf, 2);
    memcpy(address, (const uint8_t *)view.buf + 2, 4);
    PyBuffer_Release(&view);
    return 0;
}

static int tables_set_configs(TablesObject *t, PyObject *configs)
{
    PyObject *seq = PySequence_Fast(configs, "configs must be a sequence");
    if (!seq)
        return -1;
    if (PySequence_Fast_GET_SIZE(seq) != CONFIG_SLOTS) {
        Py_DECREF(seq);
        PyErr_SetString(PyExc_ValueError, "configs must have 8 entries, one per config bits");
        return -1;
    }
    t->aes = 1;
    for (int bits = 0; bits < CONFIG_SLOTS; bits++) {
        PyObject *item = PySequence_Fast_GET_ITEM(seq, bits);
        cid_config *c = &t->configs[bits];
        memset(c, 0, sizeof *c);
        if (item == Py_None)
            continue;
        int algorithm, server_id_len, nonce_len;
        PyObject *key_object;
        if (!PyArg_ParseTuple(item, "iiiO", &algorithm, &server_id_len, &nonce_len,
                              &key_object)) {
            Py_DECREF(seq);
            return -1;
        }
        const uint8_t *key = NULL;
        if (PyBytes_Check(key_object) && PyBytes_GET_SIZE(key_object) == 16)
            key = (const uint8_t *)PyBytes_AS_STRING(key_object);
        int block_len = server_id_len + nonce_len;
        int bad = algorithm < ALG_PLAINTEXT || algorithm > ALG_FOUR_PASS || server_id_len < 1
                  || server_id_len > MAX_SERVER_ID_LEN || nonce_len < 4
                  || block_len > MAX_BLOCK_LEN
                  || (key_object != Py_None && key == NULL)
                  || (algorithm == ALG_PLAINTEXT) != (key == NULL)
                  || (algorithm == ALG_SINGLE_PASS) != (key != NULL && block_len == 16);
        if (bad) {
            Py_DECREF(seq);
            PyErr_Format(PyExc_ValueError, "configs[%d]: not a QUIC-LB configuration", bits);
            return -1;
        }
        c->algorithm = (uint8_t)algorithm;
        c->server_id_len = (uint8_t)server_id_len;
        c->block_len = (uint8_t)block_len;
        c->half = (uint8_t)((block_len + 1) / 2);
        c->odd = (uint8_t)(block_len & 1);
        c->native = 1;
        if (key) {
            if (aesni_usable)
                aes128_init(&c->aes, key);
            else
                c->native = 0;
            t->aes &= c->native;
        }
    }
    Py_DECREF(seq);
    return 0;
}

static int tables_set_backends(TablesObject *t, PyObject *backends)
{
    PyObject *seq = PySequence_Fast(backends, "backends must be a sequence");
    if (!seq)
        return -1;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    size_t size = table_size(n);
    t->backend_addresses = PyMem_Calloc((size_t)n + 1, sizeof(struct sockaddr_in));
    t->backend_counts = PyMem_Calloc((size_t)n + 1, sizeof(counts));
    t->server_ids = PyMem_Calloc(size, sizeof(server_slot));
    if (!t->backend_addresses || !t->backend_counts || !t->server_ids) {
        Py_DECREF(seq);
        PyErr_NoMemory();
        return -1;
    }
    t->server_ids_mask = size - 1;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *server_id, *where;
        if (!PyArg_ParseTuple(PySequence_Fast_GET_ITEM(seq, i), "SO", &server_id, &where))
            goto fail;
        Py_ssize_t len = PyBytes_GET_SIZE(server_id);
        if (len < 1 || len > MAX_SERVER_ID_LEN) {
            PyErr_SetString(PyExc_ValueError, "a server ID is 1 to 15 octets");
            goto fail;
        }
        uint16_t port;
        uint32_t address;
        if (parse_port_and_address(where, &port, &address) < 0)
            goto fail;
        struct sockaddr_in *a = &t->backend_addresses[i];
        a->sin_family = AF_INET;
        a->sin_port = port;
        a->sin_addr.s_addr = address;
        const uint8_t *id = (const uint8_t *)PyBytes_AS_STRING(server_id);
        if (find_server_id(t, id, (int)len) >= 0) {
            PyErr_SetString(PyExc_ValueError, "a server ID is listed twice");
            goto fail;
        }
        size_t slot = hash_octets(id, (size_t)len) & t->server_ids_mask;
        while (t->server_ids[slot].index)
            slot = (slot + 1) & t->server_ids_mask;
        t->server_ids[slot].index = (uint32_t)i + 1;
        t->server_ids[slot].len = (uint8_t)len;
        memcpy(t->server_ids[slot].server_id, id, (size_t)len);
    }
    t->backend_count = n;
    Py_DECREF(seq);
    return 0;
fail:
    Py_DECREF(seq);
    return -1;
}

static int tables_set_sources(TablesObject *t, PyObject *sources)
{
    PyObject *seq = PySequence_Fast(sources, "sources must be a sequence");
    if (!seq)
        return -1;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    size_t size = table_size(n);
    t->source_counts = PyMem_Calloc((size_t)n + 1, sizeof(counts));
    t->sources = PyMem_Calloc(size, sizeof(source_slot));
    if (!t->source_counts || !t->sources) {
        Py_DECREF(seq);
        PyErr_NoMemory();
        return -1;
    }
    t->sources_mask = size - 1;
    for (Py_ssize_t i = 0; i < n; i++) {
        uint16_t port;
        uint32_t address;
        if (parse_port_and_address(PySequence_Fast_GET_ITEM(seq, i), &port, &address) < 0) {
            Py_DECREF(seq);
            return -1;
        }
        uint64_t key = source_key(port, address);
        if (find_source(t, key) >= 0) {
            Py_DECREF(seq);
            PyErr_SetString(PyExc_ValueError, "a source address is listed twice");
            return -1;
        }
        size_t slot = hash_key(key) & t->sources_mask;
        while (t->sources[slot].index)
            slot = (slot + 1) & t->sources_mask;
        t->sources[slot].index = (uint32_t)i + 1;
        t->sources[slot].key = key;
    }
    t->source_count = n;
    Py_DECREF(seq);
    return 0;
}

static void tables_dealloc(TablesObject *t)
{
    PyMem_Free(t->backend_addresses);
    PyMem_Free(t->backend_counts);
    PyMem_Free(t->server_ids);
    PyMem_Free(t->source_counts);
    PyMem_Free(t->sources);
    Py_TYPE(t)->tp_free((PyObject *)t);
}

static int tables_init(TablesObject *t, PyObject *args, PyObject *kwargs)
{
    static char *keywords[] = {"configs", "backends", "sources", "probe", NULL};
    PyObject *configs, *backends, *sources, *probe;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OOOO:Tables", keywords, &configs, &backends,
                                     &sources, &probe))
        return -1;
    if (t->server_ids || t->sources) {
        PyErr_SetString(PyExc_TypeError, "Tables are immutable: make new ones");
        return -1;
    }
    uint16_t port;
    uint32_t address;
    if (parse_port_and_address(probe, &port, &address) < 0)
        return -1;
    memcpy(t->probe, &port, 2);
    memcpy(t->probe + 2, &address, 4);
    if (tables_set_configs(t, configs) < 0 || tables_set_backends(t, backends) < 0
        || tables_set_sources(t, sources) < 0)
        return -1;
    return 0;
}

static PyObject *tables_uplink(TablesObject *t, PyObject *args)
{
    Py_buffer data;
    int port;
    if (!PyArg_ParseTuple(args, "y*i:uplink", &data, &port))
        return NULL;
    Py_ssize_t index = -1;
    if (port < 0 || port > 0xFFFF)
        PyErr_SetString(PyExc_ValueError, "port must be 0..65535");
    else
        index = decide_uplink(t, data.buf, (size_t)data.len, htons((uint16_t)port));
    PyBuffer_Release(&data);
    return PyErr_Occurred() ? NULL : PyLong_FromSsize_t(index);
}

static PyObject *tables_downlink(TablesObject *t, PyObject *args)
{
    Py_buffer data;
    PyObject *source;
    if (!PyArg_ParseTuple(args, "y*O:downlink", &data, &source))
        return NULL;
    uint16_t port;
    uint32_t address;
    Py_ssize_t index = -1;
    if (parse_port_and_address(source, &port, &address) == 0)
        index = decide_downlink(t, data.buf, (size_t)data.len, port, address);
    PyBuffer_Release(&data);
    return PyErr_Occurred() ? NULL : PyLong_FromSsize_t(index);
}

static PyObject *tables_decode(TablesObject *t, PyObject *args)
{
    Py_buffer cid;
    if (!PyArg_ParseTuple(args, "y*:decode", &cid))
        return NULL;
    uint8_t server_id[MAX_SERVER_ID_LEN + 16];
    int found = decode_server_id(t->configs, cid.buf, (size_t)cid.len, server_id);
    PyBuffer_Release(&cid);
    if (found == DECODE_PYTHON) {
        PyErr_SetString(PyExc_ValueError, "this configuration is decoded in Python here");
        return NULL;
    }
    if (found == DECODE_NONE)
        Py_RETURN_NONE;
    return PyBytes_FromStringAndSize((const char *)server_id, found);
}

static PyObject *counts_list(counts *items, Py_ssize_t n)
{
    PyObject *list = PyList_New(n);
    if (!list)
        return NULL;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *pair = Py_BuildValue("(KK)", (unsigned long long)items[i].packets,
                                       (unsigned long long)items[i].octets);
        if (!pair) {
            Py_DECREF(list);
            return NULL;
        }
        PyList_SET_ITEM(list, i, pair);
    }
    return list;
}

static PyObject *tables_fold(TablesObject *t, PyObject *unused)
{
    (void)unused;
    PyObject *up = counts_list(t->backend_counts, t->backend_count);
    PyObject *down = up ? counts_list(t->source_counts, t->source_count) : NULL;
    if (!down) {
        Py_XDECREF(up);
        return NULL;
    }
    memset(t->backend_counts, 0, sizeof(counts) * (size_t)t->backend_count);
    memset(t->source_counts, 0, sizeof(counts) * (size_t)t->source_count);
    return Py_BuildValue("(NN)", up, down);
}

static inline double now_seconds(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* CLOCK_MONOTONIC to the last timer tick (a few ms behind at most, enough for the pump's
 * ticks): read once per batch, it costs a fifth of the exact clock (6.5 against 30 ns here). */
static inline double coarse_seconds(void)
{
    struct timespec ts;
#ifdef CLOCK_MONOTONIC_COARSE
    clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
#else
    clock_gettime(CLOCK_MONOTONIC, &ts);
#endif
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* Keeps the compiler from dropping or merging the timed work. */
static volatile uint8_t sink;

static PyObject *tables_decode_cost(TablesObject *t, PyObject *args)
{
    Py_buffer cid;
    long rounds;
    if (!PyArg_ParseTuple(args, "y*l:decode_cost", &cid, &rounds))
        return NULL;
    uint8_t work[MAX_CID_LEN + 16] = {0}, server_id[MAX_SERVER_ID_LEN + 16] = {0};
    size_t len = (size_t)(cid.len < MAX_CID_LEN ? cid.len : MAX_CID_LEN);
    memcpy(work, cid.buf, len);
    PyBuffer_Release(&cid);
    if (rounds < 1 || decode_server_id(t->configs, work, len, server_id) <= 0) {
        PyErr_SetString(PyExc_ValueError, "the CID must decode here, rounds must be positive");
        return NULL;
    }
    double start = now_seconds();
    for (long i = 0; i < rounds; i++) {
        /* Each decode depends on the last (as each AES block of aes_cost does). */
        work[len - 1] ^= server_id[0];
        decode_server_id(t->configs, work, len, server_id);
    }
    double elapsed = now_seconds() - start;
    sink = server_id[0];
    return PyFloat_FromDouble(elapsed * 1e9 / (double)rounds);
}

static PyObject *tables_aes_cost(TablesObject *t, PyObject *args)
{
    int bits;
    long rounds;
    if (!PyArg_ParseTuple(args, "il:aes_cost", &bits, &rounds))
        return NULL;
    if (bits < 0 || bits >= CONFIG_SLOTS || rounds < 1 || !t->configs[bits].native
        || t->configs[bits].algorithm < ALG_SINGLE_PASS) {
        PyErr_SetString(PyExc_ValueError, "no native AES configuration has these config bits");
        return NULL;
    }
    const aes128 *aes = &t->configs[bits].aes;
    uint8_t block[16] = {0}, out[16] = {0};
    double start = now_seconds();
    for (long i = 0; i < rounds; i++) {
        block[15] ^= out[0];
        aes128_decrypt(aes, block, out);
    }
    double elapsed = now_seconds() - start;
    sink = out[0];
    return PyFloat_FromDouble(elapsed * 1e9 / (double)rounds);
}

static PyObject *tables_get_aes(TablesObject *t, void *unused)
{
    (void)unused;
    return PyBool_FromLong(t->aes);
}

static PyMethodDef tables_methods[] = {
    {"uplink", (PyCFunction)tables_uplink, METH_VARARGS,
     "uplink(datagram, port) -> index of the live backend the fast path sends it to, or -1"},
    {"downlink", (PyCFunction)tables_downlink, METH_VARARGS,
     "downlink(datagram, source) -> index of the source the fast path relays it from, or -1"},
    {"decode", (PyCFunction)tables_decode, METH_VARARGS,
     "decode(cid) -> the server ID, or None"},
    {"fold", (PyCFunction)tables_fold, METH_NOARGS,
     "fold() -> (per backend, per source) (packets, octets) since the last fold; zeroes them"},
    {"decode_cost", (PyCFunction)tables_decode_cost, METH_VARARGS,
     "decode_cost(cid, rounds) -> nanoseconds per decode of the CID's server ID"},
    {"aes_cost", (PyCFunction)tables_aes_cost, METH_VARARGS,
     "aes_cost(config_bits, rounds) -> nanoseconds per bare AES block decryption"},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef tables_getset[] = {
    {"aes", (getter)tables_get_aes, NULL, "whether every AES configuration is decoded here", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject TablesType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "lb._native.Tables",
    .tp_basicsize = sizeof(TablesObject),
    .tp_dealloc = (destructor)tables_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "The fast path's tables of one Router: configurations, backends, counters.",
    .tp_methods = tables_methods,
    .tp_getset = tables_getset,
    .tp_init = (initproc)tables_init,
    .tp_new = PyType_GenericNew,
};

/* ---- Relay -------------------------------------------------------------------------------- */

typedef struct {
    PyObject_HEAD
    int receive_fd, send_fd, reply_fd;
    int uplink;
    unsigned batch;
    int gso;
    unsigned gso_failures;
    TablesObject *tables;
    uint8_t *buffers;
    size_t buffers_len;
    struct mmsghdr rx[MAX_BATCH];
    struct iovec rx_iov[MAX_BATCH];
    struct sockaddr_in names[MAX_BATCH];
    /* Each received datagram's TOS (IP_RECVTOS), and the ECN codepoint read from it: what
     * arrives marked leaves marked, per datagram (lb/ecn.py, specs/ecn.md). */
    union {
        char buffer[2 * CMSG_SPACE(sizeof(int))];
        struct cmsghdr align;
    } rx_control[MAX_BATCH];
    uint8_t ecn[MAX_BATCH];
    /* Receives by recvmsg since the last recvmmsg, while batches hold one datagram; 0 when
     * the last batch held more (then every receive is a recvmmsg). */
    unsigned singles;
    unsigned received; /* datagrams of the last recvmmsg: their msg_namelen to reset */
    /* The batch held for Python (run() returned STATUS_SLOW) until flush(). */
    unsigned count;
    int held;
    uint8_t kinds[MAX_BATCH];
    struct sockaddr_in destinations[MAX_BATCH];
    const uint8_t *out_data[MAX_BATCH];
    size_t out_len[MAX_BATCH];
    PyObject *keep[MAX_BATCH];
    /* Staging of one sendmmsg: messages, their iovecs (one per datagram), GSO control. */
    struct mmsghdr tx[MAX_BATCH];
    struct iovec tx_iov[MAX_BATCH];
    unsigned tx_segments[MAX_BATCH];
    uint8_t tx_ecn[MAX_BATCH];
    union {
        char buffer[CMSG_SPACE(sizeof(uint16_t)) + CMSG_SPACE(sizeof(int))];
        struct cmsghdr align;
    } tx_control[MAX_BATCH];
    uint64_t errors[ERRNO_SLOTS];
    uint64_t dropped;
    uint64_t batches, datagrams, gso_messages, single_receives, yields;
} RelayObject;

static inline int transient(int code)
{
    return code == EINTR || code == EAGAIN || code == EWOULDBLOCK || code == ENOBUFS
           || code == ECONNREFUSED;
}

static inline void count_error(RelayObject *r, int code)
{
    r->errors[code > 0 && code < ERRNO_SLOTS ? code : 0]++;
    r->dropped++;
}

static void wait_writable(int fd)
{
    struct pollfd p = {.fd = fd, .events = POLLOUT};
    poll(&p, 1, SEND_WAIT_MS);
}

/* One message: a datagram by sendto (cheaper than sendmsg: no message header to copy in), a
 * GSO run by sendmsg. The transient errors are retried; returns 0 or the errno that stays. */
static int send_message(int fd, const struct msghdr *m)
{
    for (int retries = 0;; retries++) {
        ssize_t sent = m->msg_controllen
                           ? sendmsg(fd, m, 0)
                           : sendto(fd, m->msg_iov[0].iov_base, m->msg_iov[0].iov_len, 0,
                                    (const struct sockaddr *)m->msg_name, m->msg_namelen);
        if (sent >= 0)
            return 0;
        int code = errno;
        if (!transient(code) || retries >= TRANSIENT_RETRIES)
            return code;
        if (code == EAGAIN || code == EWOULDBLOCK)
            wait_writable(fd);
    }
}

/* Write an IP_TOS control message carrying ECN codepoint `ecn` at `c`; its length. */
static size_t put_ecn(struct cmsghdr *c, uint8_t ecn)
{
    int tos = ecn & ECN_MASK;
    c->cmsg_level = IPPROTO_IP;
    c->cmsg_type = IP_TOS;
    c->cmsg_len = CMSG_LEN(sizeof(int));
    memcpy(CMSG_DATA(c), &tos, sizeof tos);
    return CMSG_SPACE(sizeof(int));
}

/* The ECN codepoint in a received message's control data (0: none, or unreadable). */
static uint8_t read_ecn(struct msghdr *h)
{
    if (!h->msg_controllen || (h->msg_flags & MSG_CTRUNC))
        return 0;
    for (struct cmsghdr *c = CMSG_FIRSTHDR(h); c; c = CMSG_NXTHDR(h, c)) {
        if (c->cmsg_level != IPPROTO_IP || c->cmsg_type != IP_TOS)
            continue;
        if (c->cmsg_len == CMSG_LEN(1))
            return CMSG_DATA(c)[0] & ECN_MASK;
        if (c->cmsg_len == CMSG_LEN(sizeof(int))) {
            int tos;
            memcpy(&tos, CMSG_DATA(c), sizeof tos);
            return (uint8_t)(tos & ECN_MASK);
        }
        return 0;
    }
    return 0;
}

/* A GSO message the kernel refused: its datagrams one by one, each with its own fate (and the
 * run's ECN codepoint). */
static void send_segments(RelayObject *r, int fd, struct mmsghdr *m, uint8_t ecn)
{
    struct msghdr one = m->msg_hdr;
    union {
        char buffer[CMSG_SPACE(sizeof(int))];
        struct cmsghdr align;
    } control;
    one.msg_control = NULL;
    one.msg_controllen = 0;
    if (ecn) {
        one.msg_control = control.buffer;
        one.msg_controllen = put_ecn(&control.align, ecn);
    }
    one.msg_iovlen = 1;
    uint64_t before = r->dropped;
    for (size_t i = 0; i < m->msg_hdr.msg_iovlen; i++) {
        one.msg_iov = &m->msg_hdr.msg_iov[i];
        int code = send_message(fd, &one);
        if (code)
            count_error(r, code);
    }
    if (r->dropped == before && ++r->gso_failures >= MAX_GSO_FAILURES)
        r->gso = 0;
}

/* sendmmsg of `n` staged messages: partial sends go on from the first one not sent; a
 * transient error retries it (up to TRANSIENT_RETRIES), any other drops it alone. */
static void send_messages(RelayObject *r, int fd, unsigned n)
{
    if (n == 1) { /* the common case at light load: no sendmmsg around one message */
        int code = send_message(fd, &r->tx[0].msg_hdr);
        if (code && r->tx_segments[0] > 1)
            send_segments(r, fd, &r->tx[0], r->tx_ecn[0]);
        else if (code)
            count_error(r, code);
        return;
    }
    unsigned sent = 0;
    int retries = 0;
    while (sent < n) {
        int result = sendmmsg(fd, r->tx + sent, n - sent, 0);
        if (result > 0) {
            sent += (unsigned)result;
            retries = 0;
            continue;
        }
        int code = result < 0 ? errno : EIO;
        if (transient(code) && retries < TRANSIENT_RETRIES) {
            retries++;
            if (code == EAGAIN || code == EWOULDBLOCK)
                wait_writable(fd);
            continue;
        }
        if (r->tx_segments[sent] > 1) {
            send_segments(r, fd, &r->tx[sent], r->tx_ecn[sent]);
        } else {
            count_error(r, code);
        }
        sent++;
        retries = 0;
    }
}

/* Stage and send every datagram of the held batch whose kind is `kind` or `also`, in order;
 * runs of equal-sized datagrams to one address with one ECN codepoint (the last may be
 * shorter) become one GSO message. Relayed datagrams leave with the ECN codepoint they
 * arrived with; the forwarder's own replies leave not-ECT. */
static void send_kind(RelayObject *r, int fd, uint8_t kind, uint8_t also)
{
    unsigned messages = 0, iovecs = 0;
    size_t segment = 0, octets = 0;
    int open = 0; /* the last message may take more segments */
    for (unsigned i = 0; i < r->count; i++) {
        if (r->kinds[i] != kind && r->kinds[i] != also)
            continue;
        size_t len = r->out_len[i];
        uint8_t ecn = r->kinds[i] == KIND_REPLY ? 0 : r->ecn[i];
        struct iovec *iov = &r->tx_iov[iovecs++];
        iov->iov_base = (void *)r->out_data[i];
        iov->iov_len = len;
        if (open) {
            struct mmsghdr *last = &r->tx[messages - 1];
            const struct sockaddr_in *to = last->msg_hdr.msg_name;
            if (len <= segment && octets + len <= MAX_GSO_OCTETS
                && r->tx_segments[messages - 1] < MAX_GSO_SEGMENTS
                && r->tx_ecn[messages - 1] == ecn && to->sin_port == r->destinations[i].sin_port
                && to->sin_addr.s_addr == r->destinations[i].sin_addr.s_addr) {
                last->msg_hdr.msg_iovlen++;
                r->tx_segments[messages - 1]++;
                octets += len;
                open = len == segment;
                continue;
            }
        }
        struct mmsghdr *m = &r->tx[messages];
        memset(m, 0, sizeof *m);
        m->msg_hdr.msg_name = &r->destinations[i];
        m->msg_hdr.msg_namelen = sizeof(struct sockaddr_in);
        m->msg_hdr.msg_iov = iov;
        m->msg_hdr.msg_iovlen = 1;
        r->tx_segments[messages] = 1;
        r->tx_ecn[messages] = ecn;
        messages++;
        segment = len;
        octets = len;
        open = r->gso;
    }
    if (!messages)
        return;
    for (unsigned k = 0; k < messages; k++) {
        struct mmsghdr *m = &r->tx[k];
        if (r->tx_segments[k] < 2 && !r->tx_ecn[k])
            continue;
        struct msghdr *h = &m->msg_hdr;
        char *control = r->tx_control[k].buffer;
        memset(control, 0, sizeof r->tx_control[k].buffer);
        size_t used = 0;
        if (r->tx_segments[k] >= 2) {
            r->gso_messages++;
            struct cmsghdr *c = (struct cmsghdr *)control;
            c->cmsg_level = SOL_UDP;
            c->cmsg_type = UDP_SEGMENT;
            c->cmsg_len = CMSG_LEN(sizeof(uint16_t));
            uint16_t size = (uint16_t)h->msg_iov[0].iov_len;
            memcpy(CMSG_DATA(c), &size, sizeof size);
            used += CMSG_SPACE(sizeof(uint16_t));
        }
        if (r->tx_ecn[k])
            used += put_ecn((struct cmsghdr *)(control + used), r->tx_ecn[k]);
        h->msg_control = control;
        h->msg_controllen = used;
    }
    send_messages(r, fd, messages);
}

static void send_batch(RelayObject *r)
{
    send_kind(r, r->send_fd, KIND_FAST, KIND_SEND);
    if (r->uplink)
        send_kind(r, r->reply_fd, KIND_REPLY, KIND_REPLY);
}

/* Decide each datagram of a received batch; returns how many the fast path does not take. */
static unsigned classify(RelayObject *r, unsigned count)
{
    TablesObject *t = r->tables;
    unsigned slow = 0;
    for (unsigned i = 0; i < count; i++) {
        uint8_t *slot = r->buffers + (size_t)i * SLOT_STRIDE;
        uint8_t *data = slot + HEADER_LEN;
        size_t len = r->rx[i].msg_len;
        const struct sockaddr_in *source = &r->names[i];
        r->ecn[i] = read_ecn(&r->rx[i].msg_hdr);
        Py_ssize_t index;
        if (r->uplink) {
            index = decide_uplink(t, data, len, source->sin_port);
            if (index >= 0) {
                slot[0] = MAGIC_VERSION;
                slot[1] = FAMILY_IPV4;
                memcpy(slot + 2, &source->sin_port, 2);
                memcpy(slot + 4, &source->sin_addr.s_addr, 4);
                r->out_data[i] = slot;
                r->out_len[i] = len + HEADER_LEN;
                r->destinations[i] = t->backend_addresses[index];
                counts *c = &t->backend_counts[index];
                c->packets++;
                c->octets += len;
            }
        } else {
            index = decide_downlink(t, data, len, source->sin_port, source->sin_addr.s_addr);
            if (index >= 0) {
                struct sockaddr_in *to = &r->destinations[i];
                to->sin_family = AF_INET;
                memcpy(&to->sin_port, data + 2, 2);
                memcpy(&to->sin_addr.s_addr, data + 4, 4);
                r->out_data[i] = data + HEADER_LEN;
                r->out_len[i] = len - HEADER_LEN;
                counts *c = &t->source_counts[index];
                c->packets++;
                c->octets += len;
            }
        }
        if (index >= 0) {
            r->kinds[i] = KIND_FAST;
        } else {
            r->kinds[i] = KIND_SLOW;
            slow++;
        }
    }
    return slow;
}

/* Receive what is queued into the slots (blocking until one datagram is there): its count,
 * or -1 and errno. A batch is whatever is queued (MSG_WAITFORONE: never a wait for more), so
 * it adapts by itself, with two refinements measured on this VM (specs/forwarder.md):
 *
 * - A recvmmsg that finds one datagram tries for a second one, a pass through the socket
 *   layer that costs more than recvfrom's lighter call (0.4 and 0.2 us). So after a batch of
 *   one the loop takes datagrams one by one with recvfrom, and every PROBE_EVERY-th receive
 *   is a recvmmsg again, which stays with batches as long as it finds more than one.
 * - After a batch of more than one (datagrams are queueing up), the loop yields the CPU once
 *   before the next receive: the processes that feed the socket, if they wait for this core,
 *   add to the queue and the next receive takes a bigger batch, instead of this pump draining
 *   the queue, sleeping and being woken for the next datagram (a context switch each way, and
 *   in a VM an idle exit). With nothing else to run, sched_yield returns at once. */
static int receive_batch(RelayObject *r)
{
    if (r->singles && r->singles < PROBE_EVERY) {
        /* recvmsg, not recvfrom: the datagram's TOS comes as control data. */
        struct msghdr *h = &r->rx[0].msg_hdr;
        h->msg_namelen = sizeof(struct sockaddr_in);
        h->msg_controllen = sizeof r->rx_control[0].buffer;
        ssize_t len = recvmsg(r->receive_fd, h, 0);
        if (len < 0)
            return -1;
        r->rx[0].msg_len = (unsigned)len;
        r->singles++;
        r->single_receives++;
        return 1;
    }
    if (r->received > 1 && !r->singles) {
        sched_yield();
        r->yields++;
    }
    for (unsigned i = 0; i < r->received; i++) {
        r->rx[i].msg_hdr.msg_namelen = sizeof(struct sockaddr_in);
        r->rx[i].msg_hdr.msg_controllen = sizeof r->rx_control[i].buffer;
    }
    int count = recvmmsg(r->receive_fd, r->rx, r->batch, MSG_WAITFORONE, NULL);
    if (count > 0) {
        r->received = (unsigned)count;
        r->singles = count == 1;
    }
    return count;
}

/* The loop, without the GIL: returns a STATUS_*; *error is errno for STATUS_ERROR. */
static int relay_loop(RelayObject *r, double deadline, int *error)
{
    for (;;) {
        if (coarse_seconds() >= deadline)
            return STATUS_TICK;
        int count = receive_batch(r);
        if (count <= 0) {
            int code = count < 0 ? errno : EAGAIN;
            if (code == EINTR)
                return STATUS_INTERRUPTED;
            if (code == EAGAIN || code == EWOULDBLOCK)
                return STATUS_IDLE;
            *error = code;
            return STATUS_ERROR;
        }
        r->batches++;
        r->datagrams += (unsigned)count;
        r->count = (unsigned)count;
        if (classify(r, (unsigned)count)) {
            r->held = 1;
            return STATUS_SLOW;
        }
        send_batch(r);
        r->count = 0;
    }
}

static void relay_release(RelayObject *r)
{
    for (unsigned i = 0; i < r->count; i++) {
        Py_CLEAR(r->keep[i]);
    }
    r->count = 0;
    r->held = 0;
}

static void relay_dealloc(RelayObject *r)
{
    relay_release(r);
    Py_CLEAR(r->tables);
    if (r->buffers)
        munmap(r->buffers, r->buffers_len);
    Py_TYPE(r)->tp_free((PyObject *)r);
}

static int relay_init(RelayObject *r, PyObject *args, PyObject *kwargs)
{
    static char *keywords[] = {"receive_fd", "send_fd", "reply_fd", "tables", "uplink", "batch",
                               "gso", NULL};
    int receive_fd, send_fd, reply_fd, uplink, gso = 1;
    unsigned int batch = DEFAULT_BATCH;
    TablesObject *tables;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "iiiO!p|$Ip:Relay", keywords, &receive_fd,
                                     &send_fd, &reply_fd, &TablesType, &tables, &uplink, &batch,
                                     &gso))
        return -1;
    if (r->buffers) {
        PyErr_SetString(PyExc_TypeError, "a Relay is initialised once");
        return -1;
    }
    if (batch < 1 || batch > MAX_BATCH) {
        PyErr_Format(PyExc_ValueError, "batch must be between 1 and %d", MAX_BATCH);
        return -1;
    }
    if (receive_fd < 0 || send_fd < 0 || reply_fd < 0) {
        PyErr_SetString(PyExc_ValueError, "file descriptors must be open sockets");
        return -1;
    }
    r->buffers_len = (size_t)batch * SLOT_STRIDE;
    void *buffers = mmap(NULL, r->buffers_len, PROT_READ | PROT_WRITE,
                         MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (buffers == MAP_FAILED) {
        PyErr_SetFromErrno(PyExc_OSError);
        return -1;
    }
    r->buffers = buffers;
    r->receive_fd = receive_fd;
    r->send_fd = send_fd;
    r->reply_fd = reply_fd;
    r->uplink = uplink;
    r->batch = batch;
    r->gso = gso;
    Py_INCREF(tables);
    r->tables = tables;
    for (unsigned i = 0; i < batch; i++) {
        r->rx_iov[i].iov_base = r->buffers + (size_t)i * SLOT_STRIDE + HEADER_LEN;
        r->rx_iov[i].iov_len = SLOT_LEN;
        struct msghdr *h = &r->rx[i].msg_hdr;
        h->msg_name = &r->names[i];
        h->msg_namelen = sizeof(struct sockaddr_in);
        h->msg_iov = &r->rx_iov[i];
        h->msg_iovlen = 1;
        h->msg_control = r->rx_control[i].buffer;
        h->msg_controllen = sizeof r->rx_control[i].buffer;
    }
    return 0;
}

static PyObject *relay_use(RelayObject *r, PyObject *arg)
{
    if (!PyObject_TypeCheck(arg, &TablesType)) {
        PyErr_SetString(PyExc_TypeError, "use() takes Tables");
        return NULL;
    }
    if (r->held) {
        PyErr_SetString(PyExc_ValueError, "flush() the held batch first");
        return NULL;
    }
    Py_INCREF(arg);
    Py_SETREF(r->tables, (TablesObject *)arg);
    Py_RETURN_NONE;
}

static PyObject *relay_run(RelayObject *r, PyObject *arg)
{
    double deadline = PyFloat_AsDouble(arg);
    if (deadline == -1.0 && PyErr_Occurred())
        return NULL;
    if (r->held) {
        PyErr_SetString(PyExc_ValueError, "flush() the held batch first");
        return NULL;
    }
    int status, error = 0;
    Py_BEGIN_ALLOW_THREADS
    status = relay_loop(r, deadline, &error);
    Py_END_ALLOW_THREADS
    if (status == STATUS_ERROR) {
        errno = error;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    return PyLong_FromLong(status);
}

static PyObject *relay_pending(RelayObject *r, PyObject *unused)
{
    (void)unused;
    PyObject *list = PyList_New(0);
    if (!list || !r->held)
        return list;
    for (unsigned i = 0; i < r->count; i++) {
        if (r->kinds[i] != KIND_SLOW)
            continue;
        const uint8_t *a = (const uint8_t *)&r->names[i].sin_addr.s_addr;
        PyObject *item = Py_BuildValue(
            "(Iy#(Ni))", i, (const char *)r->buffers + (size_t)i * SLOT_STRIDE + HEADER_LEN,
            (Py_ssize_t)r->rx[i].msg_len,
            PyUnicode_FromFormat("%u.%u.%u.%u", a[0], a[1], a[2], a[3]),
            (int)ntohs(r->names[i].sin_port));
        if (!item || PyList_Append(list, item) < 0) {
            Py_XDECREF(item);
            Py_DECREF(list);
            return NULL;
        }
        Py_DECREF(item);
    }
    return list;
}

static PyObject *relay_resolve(RelayObject *r, PyObject *args)
{
    unsigned int index;
    PyObject *address, *data;
    int reply;
    if (!PyArg_ParseTuple(args, "IOSp:resolve", &index, &address, &data, &reply))
        return NULL;
    if (!r->held || index >= r->count || r->kinds[index] != KIND_SLOW) {
        PyErr_SetString(PyExc_ValueError, "no datagram of the held batch waits at this index");
        return NULL;
    }
    if (reply && !r->uplink) {
        PyErr_SetString(PyExc_ValueError, "a downlink relay sends no replies");
        return NULL;
    }
    const char *host;
    int port;
    struct in_addr parsed;
    if (!PyTuple_Check(address) || PyTuple_GET_SIZE(address) < 2
        || !PyArg_ParseTuple(address, "si", &host, &port) || port < 0 || port > 0xFFFF
        || inet_pton(AF_INET, host, &parsed) != 1) {
        /* An address this IPv4 socket cannot send to: that datagram alone is lost. */
        PyErr_Clear();
        r->kinds[index] = KIND_NONE;
        count_error(r, EAFNOSUPPORT);
        Py_RETURN_NONE;
    }
    struct sockaddr_in *to = &r->destinations[index];
    memset(to, 0, sizeof *to);
    to->sin_family = AF_INET;
    to->sin_port = htons((uint16_t)port);
    to->sin_addr = parsed;
    Py_INCREF(data);
    Py_XSETREF(r->keep[index], data);
    r->out_data[index] = (const uint8_t *)PyBytes_AS_STRING(data);
    r->out_len[index] = (size_t)PyBytes_GET_SIZE(data);
    r->kinds[index] = reply ? KIND_REPLY : KIND_SEND;
    Py_RETURN_NONE;
}

static PyObject *relay_flush(RelayObject *r, PyObject *unused)
{
    (void)unused;
    if (r->held)
        send_batch(r);
    relay_release(r);
    Py_RETURN_NONE;
}

static PyObject *relay_take_dropped(RelayObject *r, PyObject *unused)
{
    (void)unused;
    uint64_t dropped = r->dropped;
    r->dropped = 0;
    return PyLong_FromUnsignedLongLong(dropped);
}

static PyObject *relay_errors(RelayObject *r, PyObject *unused)
{
    (void)unused;
    PyObject *errors = PyDict_New();
    for (int code = 0; errors && code < ERRNO_SLOTS; code++) {
        if (!r->errors[code])
            continue;
        PyObject *key = PyLong_FromLong(code);
        PyObject *value = PyLong_FromUnsignedLongLong(r->errors[code]);
        if (!key || !value || PyDict_SetItem(errors, key, value) < 0)
            Py_CLEAR(errors);
        Py_XDECREF(key);
        Py_XDECREF(value);
    }
    return errors;
}

static PyObject *relay_statistics(RelayObject *r, PyObject *unused)
{
    (void)unused;
    return Py_BuildValue("(KKKiKK)", (unsigned long long)r->batches,
                         (unsigned long long)r->datagrams, (unsigned long long)r->gso_messages,
                         r->gso, (unsigned long long)r->single_receives,
                         (unsigned long long)r->yields);
}

static PyMethodDef relay_methods[] = {
    {"use", (PyCFunction)relay_use, METH_O, "use(tables): decide with these from now on"},
    {"run", (PyCFunction)relay_run, METH_O,
     "run(deadline) -> IDLE, INTERRUPTED, TICK or SLOW: relay until Python is needed"},
    {"pending", (PyCFunction)relay_pending, METH_NOARGS,
     "pending() -> [(index, datagram, (host, port))]: the held batch's datagrams for Python"},
    {"resolve", (PyCFunction)relay_resolve, METH_VARARGS,
     "resolve(index, (host, port), datagram, reply): send this for a pending datagram"},
    {"flush", (PyCFunction)relay_flush, METH_NOARGS,
     "flush(): send the held batch in order (unresolved datagrams are dropped)"},
    {"take_dropped", (PyCFunction)relay_take_dropped, METH_NOARGS,
     "take_dropped() -> datagrams not sent since the last call (send errors)"},
    {"errors", (PyCFunction)relay_errors, METH_NOARGS,
     "errors() -> {errno: datagrams not sent}, since the start"},
    {"statistics", (PyCFunction)relay_statistics, METH_NOARGS,
     "statistics() -> (batches and datagrams received, GSO messages sent, GSO still on, "
     "receives by recvfrom, yields)"},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject RelayType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "lb._native.Relay",
    .tp_basicsize = sizeof(RelayObject),
    .tp_dealloc = (destructor)relay_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "One pump's batched receive, decide and send loop (IPv4 sockets).",
    .tp_methods = relay_methods,
    .tp_init = (initproc)relay_init,
    .tp_new = PyType_GenericNew,
};

/* ---- module ------------------------------------------------------------------------------- */

static struct PyModuleDef native_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "lb._native",
    .m_doc = "The forwarder's native fast path (see lb/native_path.py).",
    .m_size = -1,
};

PyMODINIT_FUNC PyInit__native(void)
{
#if QV_X86
    __builtin_cpu_init();
    aesni_usable = __builtin_cpu_supports("aes") && __builtin_cpu_supports("sse2");
#endif
    if (PyType_Ready(&TablesType) < 0 || PyType_Ready(&RelayType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&native_module);
    if (!m)
        return NULL;
    if (PyModule_AddObjectRef(m, "Tables", (PyObject *)&TablesType) < 0
        || PyModule_AddObjectRef(m, "Relay", (PyObject *)&RelayType) < 0
        || PyModule_AddIntConstant(m, "ABI_VERSION", ABI_VERSION) < 0
        || PyModule_AddIntConstant(m, "AESNI", aesni_usable) < 0
        || PyModule_AddIntConstant(m, "MAX_BATCH", MAX_BATCH) < 0
        || PyModule_AddIntConstant(m, "PROBE_EVERY", PROBE_EVERY) < 0
        || PyModule_AddIntConstant(m, "IDLE", STATUS_IDLE) < 0
        || PyModule_AddIntConstant(m, "INTERRUPTED", STATUS_INTERRUPTED) < 0
        || PyModule_AddIntConstant(m, "TICK", STATUS_TICK) < 0
        || PyModule_AddIntConstant(m, "SLOW", STATUS_SLOW) < 0
        || PyModule_AddIntConstant(m, "PLAINTEXT", ALG_PLAINTEXT) < 0
        || PyModule_AddIntConstant(m, "SINGLE_PASS", ALG_SINGLE_PASS) < 0
        || PyModule_AddIntConstant(m, "FOUR_PASS", ALG_FOUR_PASS) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
