/* Lay records out in the shared journal's aligned buffer, for the journal writer.
 *
 * A record is its head (payload length | CRC-32C mark, CRC-32C of the payload;
 * two little-endian u32, pipeline/record_log.py) and its payload, given as
 * parts. In Python each part costs a checksum call and a slice copy with the
 * GIL held: the writer held the GIL for about 30 % of a core at 60 robots,
 * time the event loop waited for. Here one call lays out a whole batch, the
 * copy and the checksum in one pass over each part, and a batch of more than
 * RELEASE_GIL_BYTES does it with the GIL released.
 *
 * CRC-32C uses the SSE 4.2 instruction; without it (another CPU) `available`
 * is False and the writer lays records out in Python.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#define CRC32C_MARK 0x80000000u
#define HEAD_BYTES 8
#define RELEASE_GIL_BYTES (64 * 1024) /* below it, handing the GIL over costs more than the copy */

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define HAVE_LAYOUT 1

__attribute__((target("sse4.2"))) static uint32_t copy_and_checksum(unsigned char *dst, const unsigned char *src,
                                                                     size_t n, uint32_t value) {
    uint64_t crc = (uint32_t)~value;
    while (n >= 8) {
        uint64_t word;
        memcpy(&word, src, 8);
        crc = __builtin_ia32_crc32di(crc, word);
        memcpy(dst, &word, 8);
        src += 8;
        dst += 8;
        n -= 8;
    }
    uint32_t tail = (uint32_t)crc;
    while (n--) {
        unsigned char byte = *src++;
        tail = __builtin_ia32_crc32qi(tail, byte);
        *dst++ = byte;
    }
    return ~tail;
}

static int cpu_has_crc32c(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("sse4.2");
}
#else
#define HAVE_LAYOUT 0
static uint32_t copy_and_checksum(unsigned char *dst, const unsigned char *src, size_t n, uint32_t value) {
    (void)dst, (void)src, (void)n;
    return value;
}
static int cpu_has_crc32c(void) { return 0; }
#endif

static int available;

static void put_le32(unsigned char *at, uint32_t value) {
    at[0] = (unsigned char)value;
    at[1] = (unsigned char)(value >> 8);
    at[2] = (unsigned char)(value >> 16);
    at[3] = (unsigned char)(value >> 24);
}

static PyObject *lay_out(PyObject *module, PyObject *args) {
    (void)module;
    PyObject *target, *records;
    Py_ssize_t pos;
    if (!PyArg_ParseTuple(args, "OnO", &target, &pos, &records))
        return NULL;
    if (!available) {
        PyErr_SetString(PyExc_RuntimeError, "this CPU has no CRC-32C instruction: lay records out in Python");
        return NULL;
    }
    PyObject *record_list = PySequence_Fast(records, "records must be a sequence of sequences of buffers");
    if (record_list == NULL)
        return NULL;
    Py_ssize_t n_records = PySequence_Fast_GET_SIZE(record_list);
    PyObject **record_items = PySequence_Fast_ITEMS(record_list);

    Py_buffer dest;
    if (PyObject_GetBuffer(target, &dest, PyBUF_WRITABLE) < 0) {
        Py_DECREF(record_list);
        return NULL;
    }
    PyObject **part_lists = PyMem_Calloc((size_t)n_records + 1, sizeof(PyObject *));
    Py_ssize_t *starts = PyMem_Calloc((size_t)n_records + 1, sizeof(Py_ssize_t));
    Py_ssize_t n_parts = 0;
    Py_buffer *parts = NULL;
    Py_ssize_t n_held = 0;
    PyObject *result = NULL;
    if (part_lists == NULL || starts == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    for (Py_ssize_t r = 0; r < n_records; r++) {
        part_lists[r] = PySequence_Fast(record_items[r], "a record must be a sequence of buffers");
        if (part_lists[r] == NULL)
            goto done;
        n_parts += PySequence_Fast_GET_SIZE(part_lists[r]);
    }
    parts = PyMem_Calloc((size_t)n_parts + 1, sizeof(Py_buffer));
    if (parts == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    Py_ssize_t total = 0;
    for (Py_ssize_t r = 0; r < n_records; r++) {
        Py_ssize_t length = 0;
        Py_ssize_t count = PySequence_Fast_GET_SIZE(part_lists[r]);
        PyObject **items = PySequence_Fast_ITEMS(part_lists[r]);
        for (Py_ssize_t i = 0; i < count; i++) {
            if (PyObject_GetBuffer(items[i], &parts[n_held], PyBUF_SIMPLE) < 0)
                goto done;
            length += parts[n_held++].len;
        }
        if (length >= (Py_ssize_t)CRC32C_MARK) {
            PyErr_Format(PyExc_ValueError, "record %zd is %zd bytes; a record holds less than 2 GiB", r, length);
            goto done;
        }
        total += HEAD_BYTES + length;
    }
    if (pos < 0 || pos > dest.len || total > dest.len - pos) {
        result = Py_NewRef(Py_None); /* does not fit: the caller writes the buffer out in pieces */
        goto done;
    }

    unsigned char *base = (unsigned char *)dest.buf;
    Py_ssize_t at = pos;
    PyThreadState *saved = total > RELEASE_GIL_BYTES ? PyEval_SaveThread() : NULL;
    Py_buffer *part = parts;
    for (Py_ssize_t r = 0; r < n_records; r++) {
        starts[r] = at;
        unsigned char *head = base + at;
        at += HEAD_BYTES;
        uint32_t crc = 0;
        Py_ssize_t length = 0;
        for (Py_ssize_t i = PySequence_Fast_GET_SIZE(part_lists[r]); i > 0; i--, part++) {
            crc = copy_and_checksum(base + at, (const unsigned char *)part->buf, (size_t)part->len, crc);
            at += part->len;
            length += part->len;
        }
        put_le32(head, (uint32_t)length | CRC32C_MARK);
        put_le32(head + 4, crc);
    }
    if (saved != NULL)
        PyEval_RestoreThread(saved);

    PyObject *offsets = PyList_New(n_records);
    if (offsets == NULL)
        goto done;
    for (Py_ssize_t r = 0; r < n_records; r++) {
        PyObject *offset = PyLong_FromSsize_t(starts[r]);
        if (offset == NULL) {
            Py_DECREF(offsets);
            goto done;
        }
        PyList_SET_ITEM(offsets, r, offset);
    }
    result = Py_BuildValue("(nN)", at, offsets);

done:
    for (Py_ssize_t i = 0; i < n_held; i++)
        PyBuffer_Release(&parts[i]);
    if (part_lists != NULL)
        for (Py_ssize_t r = 0; r < n_records; r++)
            Py_XDECREF(part_lists[r]);
    PyMem_Free(parts);
    PyMem_Free(part_lists);
    PyMem_Free(starts);
    PyBuffer_Release(&dest);
    Py_DECREF(record_list);
    return result;
}

static PyObject *checksum(PyObject *module, PyObject *args) {
    (void)module;
    Py_buffer data;
    unsigned int value = 0;
    if (!PyArg_ParseTuple(args, "y*|I", &data, &value))
        return NULL;
    if (!available) {
        PyBuffer_Release(&data);
        PyErr_SetString(PyExc_RuntimeError, "this CPU has no CRC-32C instruction");
        return NULL;
    }
    unsigned char *scratch = PyMem_Malloc((size_t)data.len + 1);
    if (scratch == NULL) {
        PyBuffer_Release(&data);
        return PyErr_NoMemory();
    }
    uint32_t crc = copy_and_checksum(scratch, (const unsigned char *)data.buf, (size_t)data.len, value);
    PyMem_Free(scratch);
    PyBuffer_Release(&data);
    return PyLong_FromUnsignedLong(crc);
}

static PyMethodDef methods[] = {
    {"lay_out", lay_out, METH_VARARGS,
     "lay_out(buffer, pos, records) -> (end, starts) | None\n\n"
     "Write each record (head, then its parts) into the writable `buffer` from `pos` on; return\n"
     "where they end and where each one starts. None, and nothing written, if they do not fit."},
    {"checksum", checksum, METH_VARARGS,
     "checksum(data, value=0) -> int: the CRC-32C lay_out computes (continuing from value)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT, "pipeline._record_layout",
    "The journal writer's record layout, compiled (see pipeline/direct_record_writer.py).", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__record_layout(void) {
    available = HAVE_LAYOUT && cpu_has_crc32c();
    PyObject *module = PyModule_Create(&module_def);
    if (module != NULL && PyModule_AddObjectRef(module, "available", available ? Py_True : Py_False) < 0) {
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
