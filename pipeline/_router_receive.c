/* Receive a batch of ROUTER messages in one call, for the ingest's event loop.
 *
 * The pure-Python receive (pipeline/router_receive.py) calls pyzmq three to
 * five times per message, each call giving the GIL up and taking it back.
 * This does the same receives in C, with the GIL held (every receive is
 * non-blocking), and returns what the Python version returns, for 0.4x its
 * CPU (tools/bench_compiled_path.py).
 *
 * It calls the libzmq that pyzmq already loaded (found among the loaded
 * objects, its functions looked up by name), so the socket handle pyzmq gives
 * out (Socket.underlying) is one this libzmq knows. Nothing is linked at
 * build time and no zmq.h is needed: the few functions used are libzmq's
 * stable 4.x ABI, declared below.
 */
#define PY_SSIZE_T_CLEAN
#define _GNU_SOURCE
#include <Python.h>
#include <dlfcn.h>
#include <errno.h>
#include <link.h>
#include <string.h>
#include <time.h>

/* libzmq 4.x: an opaque 64-byte message, pointer-aligned. */
typedef struct {
    unsigned char _[64];
} __attribute__((aligned(sizeof(void *)))) zmq_msg;

#define ZMQ_DONTWAIT 1

static int (*zmq_msg_init_)(zmq_msg *);
static int (*zmq_msg_recv_)(zmq_msg *, void *, int);
static void *(*zmq_msg_data_)(zmq_msg *);
static size_t (*zmq_msg_size_)(const zmq_msg *);
static int (*zmq_msg_more_)(const zmq_msg *);
static const char *(*zmq_msg_gets_)(const zmq_msg *, const char *);
static int (*zmq_msg_move_)(zmq_msg *, zmq_msg *);
static int (*zmq_msg_close_)(zmq_msg *);
static int (*zmq_errno_)(void);
static char library_path[4096];

/* ------------------------------------------------------------------ a received part, kept without a copy */

typedef struct {
    PyObject_HEAD
    zmq_msg msg;
} Part;

static int part_getbuffer(PyObject *self, Py_buffer *view, int flags) {
    Part *part = (Part *)self;
    return PyBuffer_FillInfo(view, self, zmq_msg_data_(&part->msg), (Py_ssize_t)zmq_msg_size_(&part->msg), 1, flags);
}

static void part_dealloc(PyObject *self) {
    zmq_msg_close_(&((Part *)self)->msg); /* thread-safe: the content's reference count is atomic */
    Py_TYPE(self)->tp_free(self);
}

static PyBufferProcs part_as_buffer = {part_getbuffer, NULL};

static PyTypeObject PartType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "pipeline._router_receive.Part",
    .tp_basicsize = sizeof(Part),
    .tp_dealloc = part_dealloc,
    .tp_as_buffer = &part_as_buffer,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "One received message part, read through a memoryview without copying it.",
};

/* ------------------------------------------------------------------ binding to pyzmq's libzmq */

static int find_libzmq(struct dl_phdr_info *info, size_t size, void *data) {
    (void)size;
    (void)data;
    const char *name = info->dlpi_name;
    const char *base = name ? strrchr(name, '/') : NULL;
    base = base ? base + 1 : name;
    if (base && strncmp(base, "libzmq", 6) == 0) {
        snprintf(library_path, sizeof library_path, "%s", name);
        return 1;
    }
    return 0;
}

static PyObject *bind(PyObject *module, PyObject *unused) {
    (void)module;
    (void)unused;
    if (zmq_msg_recv_ != NULL)
        return PyUnicode_DecodeFSDefault(library_path);
    library_path[0] = '\0';
    dl_iterate_phdr(find_libzmq, NULL);
    if (library_path[0] == '\0') {
        PyErr_SetString(PyExc_ImportError, "no libzmq among the loaded libraries (import zmq first; a pyzmq "
                                           "with libzmq linked into its own module is not supported)");
        return NULL;
    }
    void *lib = dlopen(library_path, RTLD_NOW | RTLD_NOLOAD);
    if (lib == NULL) {
        PyErr_Format(PyExc_ImportError, "cannot open the loaded %s: %s", library_path, dlerror());
        return NULL;
    }
    struct {
        const char *name;
        void **slot;
    } wanted[] = {
        {"zmq_msg_init", (void **)&zmq_msg_init_}, {"zmq_msg_recv", (void **)&zmq_msg_recv_},
        {"zmq_msg_data", (void **)&zmq_msg_data_}, {"zmq_msg_size", (void **)&zmq_msg_size_},
        {"zmq_msg_more", (void **)&zmq_msg_more_}, {"zmq_msg_gets", (void **)&zmq_msg_gets_},
        {"zmq_msg_move", (void **)&zmq_msg_move_}, {"zmq_msg_close", (void **)&zmq_msg_close_},
        {"zmq_errno", (void **)&zmq_errno_},
    };
    void *found[sizeof wanted / sizeof wanted[0]];
    for (size_t i = 0; i < sizeof wanted / sizeof wanted[0]; i++) {
        found[i] = dlsym(lib, wanted[i].name);
        if (found[i] == NULL) {
            PyErr_Format(PyExc_ImportError, "%s has no %s", library_path, wanted[i].name);
            return NULL;
        }
    }
    /* All or nothing: only once every function was found (zmq_msg_recv_ set says "bound"). */
    for (size_t i = 0; i < sizeof wanted / sizeof wanted[0]; i++)
        *wanted[i].slot = found[i];
    return PyUnicode_DecodeFSDefault(library_path);
}

/* ------------------------------------------------------------------ the batch */

static PyObject *copy_of(zmq_msg *msg) {
    return PyBytes_FromStringAndSize((const char *)zmq_msg_data_(msg), (Py_ssize_t)zmq_msg_size_(msg));
}

static PyObject *view_of(zmq_msg *msg) {
    Part *part = PyObject_New(Part, &PartType);
    if (part == NULL)
        return NULL;
    zmq_msg_init_(&part->msg);
    zmq_msg_move_(&part->msg, msg);
    PyObject *view = PyMemoryView_FromObject((PyObject *)part);
    Py_DECREF(part);
    return view;
}

/* The rest of a message after its identity: the first part copied (a header),
 * the others copied below zero_copy_bytes and viewed from there on. */
static PyObject *body_parts(void *socket, Py_ssize_t zero_copy_bytes, int *error) {
    PyObject *parts = PyList_New(0);
    if (parts == NULL)
        return NULL;
    zmq_msg msg;
    int more = 1;
    for (Py_ssize_t index = 0; more; index++) {
        zmq_msg_init_(&msg);
        if (zmq_msg_recv_(&msg, socket, ZMQ_DONTWAIT) < 0) {
            *error = zmq_errno_();
            zmq_msg_close_(&msg);
            Py_DECREF(parts);
            return NULL;
        }
        more = zmq_msg_more_(&msg);
        PyObject *part;
        if (index == 0 || (Py_ssize_t)zmq_msg_size_(&msg) < zero_copy_bytes) {
            part = copy_of(&msg);
            zmq_msg_close_(&msg);
        } else {
            part = view_of(&msg);
            zmq_msg_close_(&msg); /* moved out: closing the empty one is a no-op */
        }
        if (part == NULL || PyList_Append(parts, part) < 0) {
            Py_XDECREF(part);
            Py_DECREF(parts);
            if (more) { /* drop the rest of this message: the next receive must start at an identity */
                while (more) {
                    zmq_msg_init_(&msg);
                    if (zmq_msg_recv_(&msg, socket, ZMQ_DONTWAIT) < 0)
                        more = 0;
                    else
                        more = zmq_msg_more_(&msg);
                    zmq_msg_close_(&msg);
                }
            }
            return NULL;
        }
        Py_DECREF(part);
    }
    return parts;
}

static PyObject *receive(PyObject *module, PyObject *args) {
    (void)module;
    unsigned long long address;
    int limit;
    Py_ssize_t zero_copy_bytes;
    int with_key;
    if (!PyArg_ParseTuple(args, "Kinp", &address, &limit, &zero_copy_bytes, &with_key))
        return NULL;
    if (zmq_msg_recv_ == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "call bind() first");
        return NULL;
    }
    void *socket = (void *)(uintptr_t)address;
    PyObject *batch = PyList_New(0);
    if (batch == NULL)
        return NULL;
    int error = 0;
    zmq_msg msg;
    for (int n = 0; n < limit; n++) {
        zmq_msg_init_(&msg);
        if (zmq_msg_recv_(&msg, socket, ZMQ_DONTWAIT) < 0) {
            int err = zmq_errno_();
            zmq_msg_close_(&msg);
            if (err != EAGAIN)
                error = err;
            break;
        }
        PyObject *identity = copy_of(&msg);
        PyObject *key = NULL;
        if (with_key) {
            const char *user_id = zmq_msg_gets_(&msg, "User-Id");
            key = user_id ? PyUnicode_DecodeUTF8(user_id, (Py_ssize_t)strlen(user_id), "replace")
                          : PyUnicode_FromStringAndSize("", 0);
        } else {
            key = PyUnicode_FromStringAndSize("", 0);
        }
        int more = zmq_msg_more_(&msg);
        zmq_msg_close_(&msg);
        PyObject *parts = more ? body_parts(socket, zero_copy_bytes, &error) : PyList_New(0);
        struct timespec now;
        clock_gettime(CLOCK_REALTIME, &now);
        PyObject *arrival = PyLong_FromLongLong((long long)now.tv_sec * 1000000000LL + now.tv_nsec);
        PyObject *entry = NULL;
        if (identity && key && parts && arrival)
            entry = PyTuple_Pack(4, identity, key, parts, arrival);
        Py_XDECREF(identity);
        Py_XDECREF(key);
        Py_XDECREF(parts);
        Py_XDECREF(arrival);
        if (entry == NULL || PyList_Append(batch, entry) < 0) {
            Py_XDECREF(entry);
            if (error != 0 && !PyErr_Occurred())
                break; /* a receive failed inside a message: return what came before it */
            Py_DECREF(batch);
            return NULL;
        }
        Py_DECREF(entry);
    }
    PyObject *result = Py_BuildValue("(Ni)", batch, error);
    return result;
}

static PyMethodDef methods[] = {
    {"bind", bind, METH_NOARGS,
     "bind() -> path: look up the functions of the libzmq pyzmq loaded; ImportError if it cannot."},
    {"receive", receive, METH_VARARGS,
     "receive(socket_address, limit, zero_copy_bytes, with_key) -> (batch, errno)\n\n"
     "Up to `limit` waiting messages of a ROUTER socket as (identity, key, parts, arrival_ns);\n"
     "errno is 0 when it stopped because the socket was empty or the batch full."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT, "pipeline._router_receive",
    "The ingest's batch receive, compiled (see pipeline/router_receive.py).", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__router_receive(void) {
    if (PyType_Ready(&PartType) < 0)
        return NULL;
    return PyModule_Create(&module_def);
}
