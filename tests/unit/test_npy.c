/* .npy I/O: round trips of every dtype and rank, files written by NumPy (read here) and files
 * written here (read by NumPy), malformed files (each must give the right status and a message
 * naming the file), a byte-mutation sweep over a header, row streaming, and failing writes. */
#define _POSIX_C_SOURCE 200809L /* mkdtemp, popen */

#include "runtime/npy.h"
#include "tests/testutil.h"

#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>

static char tmp_dir[] = "/tmp/tga_test_npy_XXXXXX";

static void *read_bytes(const char *path, size_t *n) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long size = ftell(f);
    fseek(f, 0, SEEK_SET);
    void *bytes = malloc(size > 0 ? (size_t)size : 1);
    *n = fread(bytes, 1, (size_t)size, f);
    fclose(f);
    return bytes;
}

static int file_exists(const char *path) {
    struct stat st;
    return stat(path, &st) == 0;
}

/* float16 -> double written from the IEEE definition, independent of runtime/npy.c. */
static double half_reference(uint16_t half) {
    int sign = half >> 15, exponent = (half >> 10) & 31, mantissa = half & 1023;
    double magnitude = exponent == 0    ? ldexp(mantissa, -24)
                       : exponent == 31 ? (mantissa ? NAN : INFINITY)
                                        : ldexp(1024 + mantissa, exponent - 25);
    return sign ? -magnitude : magnitude;
}

static int same_value(double a, double b) { return (isnan(a) && isnan(b)) || a == b; }

/* ---- round trips ------------------------------------------------------------------------------ */

static const tga_npy_dtype all_dtypes[] = {TGA_NPY_F32, TGA_NPY_F16, TGA_NPY_F64,
                                           TGA_NPY_I32, TGA_NPY_I64, TGA_NPY_U8};

static void check_header(const tga_npy_header *h, tga_npy_dtype dtype, int ndim, const int64_t *shape,
                         const char *what) {
    int64_t count = 1;
    for (int i = 0; i < ndim; i++)
        count *= shape[i];
    CHECK(h->dtype == dtype && h->ndim == ndim && h->count == count, "%s: header dtype %d ndim %d count %lld",
          what, (int)h->dtype, h->ndim, (long long)h->count);
    for (int i = 0; i < ndim && i < h->ndim; i++)
        CHECK(h->shape[i] == shape[i], "%s: dim %d is %lld, want %lld", what, i, (long long)h->shape[i],
              (long long)shape[i]);
    CHECK(h->data_offset % 64 == 0, "%s: data offset %zu not 64-aligned", what, h->data_offset);
}

static void test_raw_round_trips(uint64_t *rng) {
    static const int64_t shapes[][4] = {{0}, {7}, {3, 5}, {2, 3, 4}, {2, 1, 3, 2}, {0, 4}};
    static const int ranks[] = {0, 1, 2, 3, 4, 2};
    for (size_t d = 0; d < sizeof all_dtypes / sizeof all_dtypes[0]; d++) {
        for (size_t s = 0; s < sizeof ranks / sizeof ranks[0]; s++) {
            tga_npy_dtype dtype = all_dtypes[d];
            int64_t count = 1;
            for (int i = 0; i < ranks[s]; i++)
                count *= shapes[s][i];
            size_t bytes = (size_t)count * tga_npy_dtype_size(dtype);
            unsigned char *data = malloc(bytes + 1);
            for (size_t i = 0; i < bytes; i++)
                data[i] = (unsigned char)tu_next(rng);
            char what[64];
            snprintf(what, sizeof what, "%s rank %d case %zu", tga_npy_dtype_name(dtype), ranks[s], s);
            const char *path = tu_in_dir(tmp_dir, "round_trip.npy");
            tga_error_clear();
            CHECK(tga_npy_save(path, dtype, data, ranks[s], shapes[s]) == TGA_OK, "%s: save: %s", what,
                  tga_error_message());
            void *back = NULL;
            tga_npy_header h;
            CHECK(tga_npy_load_raw(path, &back, &h) == TGA_OK, "%s: load: %s", what, tga_error_message());
            if (back) {
                check_header(&h, dtype, ranks[s], shapes[s], what);
                CHECK(memcmp(back, data, bytes) == 0, "%s: data differs after a round trip", what);
            }
            CHECK(!file_exists(tu_in_dir(tmp_dir, "round_trip.npy.tmp")), "%s: temporary file left behind",
                  what);
            free(back);
            free(data);
        }
    }
}

/* Typed loaders convert from every accepted stored dtype. */
static void test_typed_conversions(uint64_t *rng) {
    enum { N = 40 };
    const int64_t shape[1] = {N};
    uint16_t halves[N];
    float floats[N];
    double doubles[N];
    int64_t longs[N];
    for (int i = 0; i < N; i++) {
        halves[i] = (uint16_t)tu_next(rng);
        doubles[i] = ((double)(tu_next(rng) >> 11) / 9007199254740992.0 - 0.5) * 1e6;
        floats[i] = (float)doubles[i];
        longs[i] = (int64_t)(tu_next(rng) % 4294967296ull) - 2147483648ll;
    }
    halves[0] = 0x0001; /* smallest subnormal */
    halves[1] = 0x8000; /* -0 */
    halves[2] = 0x7c00; /* inf */
    halves[3] = 0x7bff; /* 65504 */
    tga_npy_header h;
    float *f32 = NULL;
    double *f64 = NULL;
    int32_t *i32 = NULL;

    tga_error_clear();
    CHECK(tga_npy_save(tu_in_dir(tmp_dir, "h.npy"), TGA_NPY_F16, halves, 1, shape) == TGA_OK, "save f16: %s",
          tga_error_message());
    CHECK(tga_npy_load_f32(tu_in_dir(tmp_dir, "h.npy"), &f32, &h) == TGA_OK, "f16->f32: %s",
          tga_error_message());
    CHECK(tga_npy_load_f64(tu_in_dir(tmp_dir, "h.npy"), &f64, &h) == TGA_OK, "f16->f64: %s",
          tga_error_message());
    for (int i = 0; f32 && f64 && i < N; i++) {
        CHECK(same_value(f32[i], half_reference(halves[i])), "f16 %04x -> f32 %g, want %g", halves[i], f32[i],
              half_reference(halves[i]));
        CHECK(same_value(f64[i], half_reference(halves[i])), "f16 %04x -> f64 %g", halves[i], f64[i]);
    }
    CHECK(f32 && signbit(f32[1]), "f16 -0 must keep its sign");
    free(f32);
    free(f64);

    CHECK(tga_npy_save(tu_in_dir(tmp_dir, "d.npy"), TGA_NPY_F64, doubles, 1, shape) == TGA_OK, "save f64");
    CHECK(tga_npy_load_f32(tu_in_dir(tmp_dir, "d.npy"), &f32, &h) == TGA_OK, "f64->f32: %s",
          tga_error_message());
    for (int i = 0; f32 && i < N; i++)
        CHECK(f32[i] == floats[i], "f64 %g -> f32 %g", doubles[i], f32[i]);
    free(f32);

    CHECK(tga_npy_save(tu_in_dir(tmp_dir, "f.npy"), TGA_NPY_F32, floats, 1, shape) == TGA_OK, "save f32");
    CHECK(tga_npy_load_f64(tu_in_dir(tmp_dir, "f.npy"), &f64, &h) == TGA_OK, "f32->f64: %s",
          tga_error_message());
    for (int i = 0; f64 && i < N; i++)
        CHECK(f64[i] == (double)floats[i], "f32 -> f64 at %d", i);
    free(f64);

    CHECK(tga_npy_save(tu_in_dir(tmp_dir, "l.npy"), TGA_NPY_I64, longs, 1, shape) == TGA_OK, "save i64");
    CHECK(tga_npy_load_i32(tu_in_dir(tmp_dir, "l.npy"), &i32, &h) == TGA_OK, "i64->i32: %s",
          tga_error_message());
    for (int i = 0; i32 && i < N; i++)
        CHECK(i32[i] == longs[i], "i64 %lld -> i32 %d", (long long)longs[i], i32[i]);
    free(i32);
}

/* ---- NumPy interoperability ------------------------------------------------------------------ */

/* Writes name.npy with NumPy and name.ref, the same values as raw float64 (float dtypes) or int64. */
static const char numpy_writer_py[] =
    "import sys\n"
    "import numpy as np\n"
    "d = sys.argv[1]\n"
    "rng = np.random.default_rng(7)\n"
    "def put(name, a, version=None):\n"
    "    with open(f'{d}/{name}.npy', 'wb') as f:\n"
    "        np.lib.format.write_array(f, a, version=version)\n"
    "    a.astype(np.float64 if a.dtype.kind == 'f' else np.int64).tofile(f'{d}/{name}.ref')\n"
    "put('np_f32', rng.standard_normal((3, 4, 5)).astype('<f4'))\n"
    "special = [0.0, -0.0, 1.0, -2.5, 65504.0, 6e-8, 6.1e-5, 1e-7, np.inf, -np.inf, np.nan]\n"
    "put('np_f16', np.array(special + list(rng.standard_normal(13)), '<f2').reshape(6, 4))\n"
    "put('np_f64', rng.standard_normal((2, 3)))\n"
    "put('np_i32', rng.integers(-2**31, 2**31, (5, 2), dtype='<i4'))\n"
    "put('np_i64', rng.integers(-2**31, 2**31, (7,), dtype='<i8'))\n"
    "put('np_i64_big', np.array([1, 2**40, 3], '<i8'))\n"
    "put('np_u8', rng.integers(0, 256, (4, 4), dtype='u1'))\n"
    "put('np_scalar', np.array(3.5, '<f4'))\n"
    "put('np_empty', np.zeros((0, 3), '<f4'))\n"
    "put('np_v2', rng.standard_normal((6, 2)).astype('<f4'), version=(2, 0))\n"
    "put('np_v3', rng.standard_normal((2, 5)), version=(3, 0))\n"
    "put('np_big_endian', np.arange(4, dtype='>f4'))\n"
    "put('np_fortran', np.asfortranarray(np.arange(6, dtype='<f4').reshape(2, 3)))\n"
    "put('np_bool', np.array([True, False]))\n";

static int run_python(const char *script_name, const char *script) {
    const char *script_path = tu_in_dir(tmp_dir, script_name);
    tu_write_file(script_path, script, strlen(script));
    char command[1200];
    snprintf(command, sizeof command, "/usr/bin/python3 %s %s", script_path, tmp_dir);
    int rc = system(command);
    CHECK(rc == 0, "'%s' failed (status %d): this test needs /usr/bin/python3 with numpy", command, rc);
    return rc == 0;
}

static void check_numpy_float_file(const char *name, int ndim, const int64_t *shape) {
    char npy[64], ref[64];
    snprintf(npy, sizeof npy, "%s.npy", name);
    snprintf(ref, sizeof ref, "%s.ref", name);
    size_t ref_bytes = 0;
    double *want = read_bytes(tu_in_dir(tmp_dir, ref), &ref_bytes);
    float *got = NULL;
    tga_npy_header h;
    tga_error_clear();
    CHECK(tga_npy_load_f32(tu_in_dir(tmp_dir, npy), &got, &h) == TGA_OK, "%s: %s", name, tga_error_message());
    if (got && want) {
        CHECK(h.ndim == ndim && (size_t)h.count * sizeof(double) == ref_bytes,
              "%s: header ndim %d count %lld", name, h.ndim, (long long)h.count);
        for (int i = 0; i < ndim && i < h.ndim; i++)
            CHECK(h.shape[i] == shape[i], "%s: dim %d", name, i);
        for (int64_t i = 0; i < h.count && (size_t)i * sizeof(double) < ref_bytes; i++)
            CHECK(same_value(got[i], (float)want[i]), "%s[%lld] = %g, NumPy says %g", name, (long long)i,
                  got[i], want[i]);
    }
    free(got);
    free(want);
}

static void check_numpy_int_file(const char *name, tga_npy_dtype stored) {
    char npy[64], ref[64];
    snprintf(npy, sizeof npy, "%s.npy", name);
    snprintf(ref, sizeof ref, "%s.ref", name);
    size_t ref_bytes = 0;
    int64_t *want = read_bytes(tu_in_dir(tmp_dir, ref), &ref_bytes);
    void *bytes = NULL;
    int32_t *ints = NULL;
    tga_npy_header h;
    tga_error_clear();
    tga_status st = stored == TGA_NPY_U8 ? tga_npy_load_raw(tu_in_dir(tmp_dir, npy), &bytes, &h)
                                         : tga_npy_load_i32(tu_in_dir(tmp_dir, npy), &ints, &h);
    CHECK(st == TGA_OK, "%s: %s", name, tga_error_message());
    if ((bytes || ints) && want) {
        CHECK(h.dtype == stored && (size_t)h.count * sizeof(int64_t) == ref_bytes, "%s: dtype %d count %lld",
              name, (int)h.dtype, (long long)h.count);
        for (int64_t i = 0; i < h.count && (size_t)i * sizeof(int64_t) < ref_bytes; i++) {
            int64_t value = stored == TGA_NPY_U8 ? ((uint8_t *)bytes)[i] : ints[i];
            CHECK(value == want[i], "%s[%lld] = %lld, NumPy says %lld", name, (long long)i, (long long)value,
                  (long long)want[i]);
        }
    }
    free(bytes);
    free(ints);
    free(want);
}

static void expect_error(const char *path, tga_status want, const char *fragment);

static void test_numpy_written_files(void) {
    if (!run_python("write_with_numpy.py", numpy_writer_py)) return;
    check_numpy_float_file("np_f32", 3, (const int64_t[]){3, 4, 5});
    check_numpy_float_file("np_f16", 2, (const int64_t[]){6, 4});
    check_numpy_float_file("np_f64", 2, (const int64_t[]){2, 3});
    check_numpy_float_file("np_scalar", 0, NULL);
    check_numpy_float_file("np_empty", 2, (const int64_t[]){0, 3});
    check_numpy_float_file("np_v2", 2, (const int64_t[]){6, 2});
    check_numpy_float_file("np_v3", 2, (const int64_t[]){2, 5});
    check_numpy_int_file("np_i32", TGA_NPY_I32);
    check_numpy_int_file("np_i64", TGA_NPY_I64);
    check_numpy_int_file("np_u8", TGA_NPY_U8);
    expect_error(tu_in_dir(tmp_dir, "np_big_endian.npy"), TGA_ERR_FORMAT, "big-endian");
    expect_error(tu_in_dir(tmp_dir, "np_fortran.npy"), TGA_ERR_FORMAT, "Fortran");
    expect_error(tu_in_dir(tmp_dir, "np_bool.npy"), TGA_ERR_FORMAT, "'|b1'");

    int32_t *ints = NULL;
    tga_npy_header h;
    tga_error_clear();
    CHECK(tga_npy_load_i32(tu_in_dir(tmp_dir, "np_i64_big.npy"), &ints, &h) == TGA_ERR_FORMAT && !ints,
          "an int64 beyond int32 must be refused");
    CHECK(strstr(tga_error_message(), "1099511627776") && strstr(tga_error_message(), "element 1"),
          "message should name the value and element: %s", tga_error_message());
    free(ints);
}

/* Rows of NumPy's float16 file, read through the streaming interface. */
static void test_row_streaming(void) {
    size_t ref_bytes = 0;
    double *want = read_bytes(tu_in_dir(tmp_dir, "np_f16.ref"), &ref_bytes);
    FILE *f = NULL;
    tga_npy_header h;
    tga_error_clear();
    CHECK(tga_npy_open(tu_in_dir(tmp_dir, "np_f16.npy"), &f, &h) == TGA_OK, "open: %s", tga_error_message());
    if (!f || !want || ref_bytes != 24 * sizeof(double)) {
        CHECK(0, "streaming test needs np_f16.npy and its reference");
        if (f) fclose(f);
        free(want);
        return;
    }
    float rows[8];
    CHECK(tga_npy_read_rows_f32(f, "np_f16.npy", &h, 3, 2, rows) == TGA_OK, "rows 3..4: %s",
          tga_error_message());
    for (int i = 0; i < 8; i++)
        CHECK(same_value(rows[i], (float)want[12 + i]), "row value %d", i);
    CHECK(tga_npy_read_rows_f32(f, "np_f16.npy", &h, 0, 1, rows) == TGA_OK, "row 0: %s", tga_error_message());
    for (int i = 0; i < 4; i++)
        CHECK(same_value(rows[i], (float)want[i]), "row 0 value %d", i);
    tga_error_clear();
    CHECK(tga_npy_read_rows_f32(f, "np_f16.npy", &h, 5, 2, rows) == TGA_ERR_FORMAT, "rows past the end");
    CHECK(strstr(tga_error_message(), "np_f16.npy: rows [5, 7) requested") != NULL, "message: %s",
          tga_error_message());
    fclose(f);
    free(want);
}

/* Files written here must load in NumPy with the same dtype, shape and bytes. */
static const char numpy_reader_py[] =
    "import sys\n"
    "import numpy as np\n"
    "d = sys.argv[1]\n"
    "cases = {'c_f32': ('<f4', (2, 3)), 'c_f16': ('<f2', (5,)), 'c_f64': ('<f8', ()),\n"
    "         'c_i32': ('<i4', (1, 2, 3)), 'c_i64': ('<i8', (0, 2)), 'c_u8': ('|u1', (2, 1, 1, 3))}\n"
    "bad = 0\n"
    "for name, (descr, shape) in cases.items():\n"
    "    a = np.load(f'{d}/{name}.npy')\n"
    "    raw = open(f'{d}/{name}.raw', 'rb').read()\n"
    "    if a.dtype.str != descr or a.shape != shape or a.tobytes() != raw or not a.flags.c_contiguous:\n"
    "        print(f'{name}: numpy reads {a.dtype.str} {a.shape}, want {descr} {shape}')\n"
    "        bad += 1\n"
    "sys.exit(1 if bad else 0)\n";

static void test_numpy_reads_our_files(uint64_t *rng) {
    static const struct {
        const char *name;
        tga_npy_dtype dtype;
        int ndim;
        int64_t shape[4];
    } cases[] = {{"c_f32", TGA_NPY_F32, 2, {2, 3}}, {"c_f16", TGA_NPY_F16, 1, {5}},
                 {"c_f64", TGA_NPY_F64, 0, {0}},    {"c_i32", TGA_NPY_I32, 3, {1, 2, 3}},
                 {"c_i64", TGA_NPY_I64, 2, {0, 2}}, {"c_u8", TGA_NPY_U8, 4, {2, 1, 1, 3}}};
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        int64_t count = 1;
        for (int i = 0; i < cases[c].ndim; i++)
            count *= cases[c].shape[i];
        size_t bytes = (size_t)count * tga_npy_dtype_size(cases[c].dtype);
        unsigned char data[64];
        for (size_t i = 0; i < bytes; i++)
            data[i] = (unsigned char)tu_next(rng);
        char name[64];
        snprintf(name, sizeof name, "%s.npy", cases[c].name);
        tga_error_clear();
        CHECK(tga_npy_save(tu_in_dir(tmp_dir, name), cases[c].dtype, data, cases[c].ndim, cases[c].shape) ==
                  TGA_OK,
              "save %s: %s", name, tga_error_message());
        snprintf(name, sizeof name, "%s.raw", cases[c].name);
        tu_write_file(tu_in_dir(tmp_dir, name), data, bytes);
    }
    run_python("read_with_numpy.py", numpy_reader_py);
}

/* ---- malformed files ------------------------------------------------------------------------- */

static void expect_error(const char *path, tga_status want, const char *fragment) {
    void *data = (void *)path;
    tga_npy_header h;
    tga_error_clear();
    tga_status got = tga_npy_load_raw(path, &data, &h);
    CHECK(got == want, "%s: status %s, want %s (%s)", path, tga_status_name(got), tga_status_name(want),
          tga_error_message());
    CHECK(data == NULL, "%s: data must be NULL after a failure", path);
    if (got == TGA_OK) free(data);
    CHECK(strstr(tga_error_message(), path) != NULL, "%s: message does not name the file: %s", path,
          tga_error_message());
    CHECK(strstr(tga_error_message(), fragment) != NULL, "%s: message lacks '%s': %s", path, fragment,
          tga_error_message());
}

/* A .npy file built by hand: prefix, the dict padded to 64 bytes, then data_bytes bytes of data. */
static size_t build_file(unsigned char *out, int major, const char *dict, size_t data_bytes) {
    size_t prefix = major == 1 ? 10 : 12, dict_len = strlen(dict);
    size_t total_header = (prefix + dict_len + 1 + 63) / 64 * 64, header_len = total_header - prefix;
    memcpy(out, "\x93NUMPY", 6);
    out[6] = (unsigned char)major;
    out[7] = 0;
    for (size_t i = 0; i < prefix - 8; i++)
        out[8 + i] = (unsigned char)(header_len >> (8 * i));
    memcpy(out + prefix, dict, dict_len);
    memset(out + prefix + dict_len, ' ', header_len - dict_len - 1);
    out[total_header - 1] = '\n';
    memset(out + total_header, 0x3f, data_bytes);
    return total_header + data_bytes;
}

static void check_malformed_dict(const char *name, const char *dict, size_t data_bytes,
                                 const char *fragment) {
    unsigned char file[8192];
    size_t n = build_file(file, 1, dict, data_bytes);
    tu_write_file(tu_in_dir(tmp_dir, name), file, n);
    expect_error(tu_in_dir(tmp_dir, name), TGA_ERR_FORMAT, fragment);
}

static void test_malformed_files(void) {
    unsigned char file[8192];
    const char *good = "{'descr': '<f4', 'fortran_order': False, 'shape': (3, 4), }";
    size_t n = build_file(file, 1, good, 48);
    tu_write_file(tu_in_dir(tmp_dir, "good.npy"), file, n);
    void *data = NULL;
    tga_npy_header h;
    tga_error_clear();
    CHECK(tga_npy_load_raw(tu_in_dir(tmp_dir, "good.npy"), &data, &h) == TGA_OK,
          "the hand-built file must load: %s", tga_error_message());
    free(data);

    file[5] = 'X';
    tu_write_file(tu_in_dir(tmp_dir, "magic.npy"), file, n);
    expect_error(tu_in_dir(tmp_dir, "magic.npy"), TGA_ERR_FORMAT, "not a .npy file");
    file[5] = 'Y';
    tu_write_file(tu_in_dir(tmp_dir, "empty.npy"), file, 0);
    expect_error(tu_in_dir(tmp_dir, "empty.npy"), TGA_ERR_FORMAT, "not a .npy file");
    tu_write_file(tu_in_dir(tmp_dir, "cut_length.npy"), file, 9);
    expect_error(tu_in_dir(tmp_dir, "cut_length.npy"), TGA_ERR_FORMAT, "header length");
    tu_write_file(tu_in_dir(tmp_dir, "cut_header.npy"), file, 40);
    expect_error(tu_in_dir(tmp_dir, "cut_header.npy"), TGA_ERR_FORMAT, "truncated header");
    tu_write_file(tu_in_dir(tmp_dir, "cut_data.npy"), file, n - 8);
    expect_error(tu_in_dir(tmp_dir, "cut_data.npy"), TGA_ERR_FORMAT,
                 "12 float32 values (48 bytes) but only 40 bytes follow");
    file[6] = 4;
    tu_write_file(tu_in_dir(tmp_dir, "version.npy"), file, n);
    expect_error(tu_in_dir(tmp_dir, "version.npy"), TGA_ERR_FORMAT, "version 4.0");
    file[6] = 1;

    n = build_file(file, 2, good, 48);
    file[8] = file[9] = file[10] = file[11] = 0xff;
    tu_write_file(tu_in_dir(tmp_dir, "huge_header.npy"), file, n);
    expect_error(tu_in_dir(tmp_dir, "huge_header.npy"), TGA_ERR_FORMAT, "header length 4294967295");

    check_malformed_dict(
        "short_data.npy", "{'descr': '<f4', 'fortran_order': False, 'shape': (300, 4), }", 4000,
        "truncated: header declares 1200 float32 values (4800 bytes) but only 4000 bytes follow");
    check_malformed_dict("long_data.npy", good, 52, "4 unexpected bytes");
    check_malformed_dict("fortran.npy", "{'descr': '<f4', 'fortran_order': True, 'shape': (3, 4), }", 48,
                         "Fortran");
    check_malformed_dict("descr.npy", "{'descr': '<c8', 'fortran_order': False, 'shape': (3, 4), }", 96,
                         "unsupported dtype '<c8'");
    check_malformed_dict("descr_type.npy", "{'descr': 5, 'fortran_order': False, 'shape': (3, 4), }", 48,
                         "dtype string");
    check_malformed_dict("garbage.npy", "hello, world", 0, "'{'");
    check_malformed_dict("unclosed.npy", "{'descr': '<f4', 'fortran_order': False, 'shape': (3, 4)", 48,
                         "'}'");
    check_malformed_dict("colon.npy", "{'descr' '<f4', 'fortran_order': False, 'shape': (3, 4), }", 48,
                         "':'");
    check_malformed_dict("bool.npy", "{'descr': '<f4', 'fortran_order': Falsey, 'shape': (3, 4), }", 48,
                         "True or False");
    check_malformed_dict("missing.npy", "{'descr': '<f4', 'shape': (3, 4), }", 48,
                         "'fortran_order' is missing");
    check_malformed_dict("unknown.npy", "{'descr': '<f4', 'fortran_order': False, 'shape': (3, 4), 'x': 1}",
                         48, "unknown key 'x'");
    check_malformed_dict("twice.npy",
                         "{'descr': '<f4', 'descr': '<f4', 'fortran_order': False, 'shape': (3,)}", 12,
                         "appears twice");
    check_malformed_dict("not_tuple.npy", "{'descr': '<f4', 'fortran_order': False, 'shape': (3)}", 12,
                         "1-tuple");
    check_malformed_dict("negative.npy", "{'descr': '<f4', 'fortran_order': False, 'shape': (-1,)}", 0,
                         "negative");
    check_malformed_dict("nested.npy", "{'descr': '<f4', 'fortran_order': False, 'shape': ((3,),)}", 12,
                         "non-negative integer");
    check_malformed_dict("rank9.npy",
                         "{'descr': '<f4', 'fortran_order': False, 'shape': (1,1,1,1,1,1,1,1,1)}", 4,
                         "more than 8 dimensions");
    check_malformed_dict("huge_shape.npy",
                         "{'descr': '<f4', 'fortran_order': False, 'shape': (4611686018427387904, 4)}", 0,
                         "more float32 values than a file can hold");
    check_malformed_dict("digits.npy",
                         "{'descr': '<f4', 'fortran_order': False, 'shape': (99999999999999999999,)}", 0,
                         "exceeds 64 bits");
    check_malformed_dict("trailing.npy", "{'descr': '<f4', 'fortran_order': False, 'shape': (3,)} x", 12,
                         "only spaces");

    expect_error(tu_in_dir(tmp_dir, "does_not_exist.npy"), TGA_ERR_IO, "No such file");
    expect_error(tmp_dir, TGA_ERR_IO, "read error");

    float *floats = NULL;
    int32_t *ints = NULL;
    tga_error_clear();
    CHECK(tga_npy_load_i32(tu_in_dir(tmp_dir, "good.npy"), &ints, &h) == TGA_ERR_FORMAT && !ints,
          "int load of float32 data");
    CHECK(strstr(tga_error_message(), "expected int32 or int64 data, found float32") != NULL, "message: %s",
          tga_error_message());
    free(ints);
    n = build_file(file, 1, "{'descr': '<i4', 'fortran_order': False, 'shape': (3,)}", 12);
    tu_write_file(tu_in_dir(tmp_dir, "ints.npy"), file, n);
    tga_error_clear();
    CHECK(tga_npy_load_f32(tu_in_dir(tmp_dir, "ints.npy"), &floats, &h) == TGA_ERR_FORMAT && !floats,
          "float load of int32 data");
    CHECK(strstr(tga_error_message(), "expected float32, float16 or float64 data, found int32") != NULL,
          "message: %s", tga_error_message());
    free(floats);
    floats = NULL;
    const double too_big[2] = {1.0, 1e300};
    tga_error_clear();
    CHECK(tga_npy_save(tu_in_dir(tmp_dir, "too_big.npy"), TGA_NPY_F64, too_big, 1, (const int64_t[]){2}) ==
              TGA_OK,
          "save float64");
    CHECK(tga_npy_load_f32(tu_in_dir(tmp_dir, "too_big.npy"), &floats, &h) == TGA_ERR_FORMAT && !floats,
          "1e300 as float32");
    CHECK(strstr(tga_error_message(), "does not fit in float32") != NULL, "message: %s", tga_error_message());
    free(floats);
}

/* Every truncation of a valid file and every single-byte change of its header either loads
 * consistently or fails with a format error; none may read out of bounds (run under ASan or
 * valgrind to see that). */
static void test_header_mutations(void) {
    unsigned char file[256], mutated[256];
    size_t n = build_file(file, 1, "{'descr': '<f2', 'fortran_order': False, 'shape': (2, 3), }", 12);
    static const unsigned char replacements[] = {0,   ' ', '(', ')', '{', '}', '\'',
                                                 '"', ',', ':', '-', '9', 0xff};
    int loaded = 0;
    for (size_t len = 0; len < n; len++) {
        tu_write_file(tu_in_dir(tmp_dir, "mutant.npy"), file, len);
        expect_error(tu_in_dir(tmp_dir, "mutant.npy"), TGA_ERR_FORMAT, "");
    }
    for (size_t pos = 0; pos < n - 12; pos++) {
        for (size_t r = 0; r < sizeof replacements; r++) {
            memcpy(mutated, file, n);
            mutated[pos] = replacements[r];
            tu_write_file(tu_in_dir(tmp_dir, "mutant.npy"), mutated, n);
            void *data = NULL;
            tga_npy_header h;
            tga_error_clear();
            tga_status st = tga_npy_load_raw(tu_in_dir(tmp_dir, "mutant.npy"), &data, &h);
            CHECK(st == TGA_OK || st == TGA_ERR_FORMAT, "byte %zu -> %d: status %s", pos, replacements[r],
                  tga_status_name(st));
            if (st == TGA_OK) {
                loaded++;
                CHECK((size_t)h.count * tga_npy_dtype_size(h.dtype) + h.data_offset == n,
                      "byte %zu: size mismatch", pos);
            }
            free(data);
        }
    }
    CHECK(loaded > 0, "some harmless mutations (e.g. in the padding) must still load");
}

/* ---- writing --------------------------------------------------------------------------------- */

static void test_save_replaces_atomically(void) {
    const float first[2] = {1, 2}, second[3] = {3, 4, 5};
    const char *path = tu_in_dir(tmp_dir, "replace.npy");
    tga_error_clear();
    CHECK(tga_npy_save(path, TGA_NPY_F32, first, 1, (const int64_t[]){2}) == TGA_OK, "first save");
    CHECK(tga_npy_save(path, TGA_NPY_F32, second, 1, (const int64_t[]){3}) == TGA_OK, "second save");
    float *back = NULL;
    tga_npy_header h;
    CHECK(tga_npy_load_f32(path, &back, &h) == TGA_OK && h.count == 3 && back[2] == 5,
          "the second save must win");
    free(back);

    tga_error_clear();
    CHECK(tga_npy_save(tu_in_dir(tmp_dir, "no_such_dir/x.npy"), TGA_NPY_F32, first, 1,
                       (const int64_t[]){2}) == TGA_ERR_IO,
          "saving into a missing directory");
    CHECK(strstr(tga_error_message(), "no_such_dir/x.npy") != NULL, "message: %s", tga_error_message());

    /* A write that fails part-way (file size limit: EFBIG) must report it and leave the old file. */
    struct rlimit old_limit, small_limit;
    getrlimit(RLIMIT_FSIZE, &old_limit);
    small_limit = old_limit;
    small_limit.rlim_cur = 4096;
    signal(SIGXFSZ, SIG_IGN);
    enum { BIG = 1 << 16 };
    float *big = calloc(BIG, sizeof *big);
    setrlimit(RLIMIT_FSIZE, &small_limit);
    tga_error_clear();
    tga_status st = tga_npy_save(path, TGA_NPY_F32, big, 1, (const int64_t[]){BIG});
    setrlimit(RLIMIT_FSIZE, &old_limit);
    CHECK(st == TGA_ERR_IO, "a failing write must give an I/O error, got %s", tga_status_name(st));
    CHECK(strstr(tga_error_message(), "replace.npy") != NULL, "message: %s", tga_error_message());
    CHECK(!file_exists(tu_in_dir(tmp_dir, "replace.npy.tmp")),
          "the temporary file must be removed after a failure");
    back = NULL;
    CHECK(tga_npy_load_f32(path, &back, &h) == TGA_OK && h.count == 3,
          "the old file must survive a failed save");
    free(back);
    free(big);
}

int main(void) {
    if (!mkdtemp(tmp_dir)) {
        perror("mkdtemp");
        return 1;
    }
    uint64_t rng = 20240601;
    test_raw_round_trips(&rng);
    test_typed_conversions(&rng);
    test_numpy_written_files();
    test_row_streaming();
    test_numpy_reads_our_files(&rng);
    test_malformed_files();
    test_header_mutations();
    test_save_replaces_atomically();
    char command[600];
    snprintf(command, sizeof command, "rm -rf '%s'", tmp_dir);
    if (system(command) != 0) fprintf(stderr, "could not remove %s\n", tmp_dir);
    return tu_finish("test_npy");
}
