# mod_certgate: core library, httpd module, tests.
APXS    ?= apxs
CC      ?= cc
PYTEST  ?= /usr/bin/python3 -m pytest
VERSION := $(shell sed -n 's/^\#define CG_VERSION "\(.*\)"/\1/p' src/cg_version.h)
# EXTRA_CFLAGS/EXTRA_LDFLAGS: the Debian build adds dpkg-buildflags (hardening).
CFLAGS_COMMON = -std=c11 -D_GNU_SOURCE -Wall -Wextra -Werror -O2 -g -fPIC $(EXTRA_CFLAGS)
CORE_SRC = src/cg_fp.c src/cg_reg.c src/cg_decide.c src/cg_store.c src/cg_registry.c src/cg_tls.c \
           src/cg_cert.c src/cg_policy.c src/cg_cache.c src/cg_sub.c src/cg_metrics.c src/cg_usage.c \
           src/cg_thread.c src/cg_gate.c src/cg_sentinel.c $(ADMIN_SRC) \
           src/cg_usage_batch.c src/cg_sub_msg.c src/cg_fpcache.c \
           src/cg_certkeep.c
# The admin API, by job (src/cg_admin_int.h says which file does what).
ADMIN_SRC = src/cg_admin.c src/cg_admin_route.c src/cg_admin_view.c src/cg_admin_upload.c \
            src/cg_admin_lifecycle.c src/cg_admin_entity.c src/cg_admin_read.c src/cg_admin_stats.c \
            src/cg_admin_transfer.c src/cg_admin_console.c
CORE_OBJ = $(CORE_SRC:src/%.c=build/core/%.o)
CORE_LIB = build/libcertgate.a
LIBS     = -ljansson -lhiredis -lssl -lcrypto -lpthread
MODULE   = build/mod_certgate.so
NGX_MODULE = build/ngx_http_certgate_module.so

.PHONY: all deps install deb test-package module nginx-module unit test test-unit test-integration demo demo-stop clean bench soak fuzz fuzz-build fuzz-deps test-asan test-valgrind valgrind-deps

all: module

deps:
	@bash scripts/deps.sh

build/core/%.o: src/%.c src/*.h
	@mkdir -p build/core
	$(CC) $(CFLAGS_COMMON) -Isrc -c -o $@ $<

# The console's files, embedded into the core (not committed: build/gen/).
CONSOLE_FILES = console/index.html console/app.js console/app.css
build/gen/cg_console_assets.c: $(CONSOLE_FILES) scripts/embed-assets.sh
	@mkdir -p build/gen
	sh scripts/embed-assets.sh $@ $(CONSOLE_FILES)

build/core/cg_admin_console.o: build/gen/cg_console_assets.c

$(CORE_LIB): $(CORE_OBJ)
	ar rcs $@ $^

# The httpd adapter: mod_certgate.c (hooks, the gate's request path) and
# src/httpd/ (directives, admin and metrics handlers).
HTTPD_SRC = mod_certgate.c src/httpd/cg_httpd_config.c src/httpd/cg_httpd_admin.c

# apxs compiles the adapter with httpd's flags; we add ours and link the core.
$(MODULE): $(HTTPD_SRC) $(CORE_LIB) src/*.h src/httpd/*.h
	@mkdir -p build/apxs
	cp $(HTTPD_SRC) build/apxs/
	cd build/apxs && $(APXS) -c -Wc,-std=c11 -Wc,-Wall -Wc,-Wextra -Wc,-Werror \
	  $(EXTRA_CFLAGS:%=-Wc,%) $(EXTRA_LDFLAGS:%=-Wl,%) \
	  -I$(CURDIR)/src -I$(CURDIR)/src/httpd -o mod_certgate.so $(notdir $(HTTPD_SRC)) \
	  $(CURDIR)/$(CORE_LIB) $(LIBS) >/dev/null
	cp build/apxs/.libs/mod_certgate.so $@.tmp && mv -f $@.tmp $@   # new inode: a running httpd keeps its copy

module: $(MODULE)

# nginx: Debian's nginx-dev sources configured like Debian's binary (scripts/nginx-module.sh).
$(NGX_MODULE): nginx/*.c nginx/*.h nginx/config $(CORE_LIB) src/*.h scripts/nginx-module.sh
	bash scripts/nginx-module.sh $@ $(CURDIR)/$(CORE_LIB) "$(EXTRA_CFLAGS)" "$(EXTRA_LDFLAGS)"

nginx-module: deps $(NGX_MODULE)

build/test_core: tests/unit/test_core.c $(CORE_LIB)
	$(CC) $(CFLAGS_COMMON) -Isrc -o $@ $< $(CORE_LIB) -lcmocka $(LIBS)

unit: build/test_core

# certgatectl (tools/, docs/certgatectl.md): the core, libcurl and jansson.
TOOL = build/certgatectl
TOOL_SRC = $(wildcard tools/*.c)
BINDIR ?= /usr/bin
$(TOOL): $(TOOL_SRC) tools/*.h $(CORE_LIB) src/*.h
	$(CC) $(CFLAGS_COMMON) -Isrc -Itools -o $@ $(TOOL_SRC) $(CORE_LIB) -lcurl $(LIBS) $(EXTRA_LDFLAGS)

tool: $(TOOL)
.PHONY: tool
all: $(TOOL)
test-integration: $(TOOL)
install: $(TOOL)

test-unit: build/test_core
	./build/test_core

test-integration: $(MODULE) $(NGX_MODULE)
	$(PYTEST) -q tests/integration

test: deps
	$(MAKE) test-unit
	$(MAKE) test-integration

demo: deps $(MODULE)
	@bash scripts/demo.sh start

demo-stop:
	@bash scripts/demo.sh stop

clean:
	rm -rf build

build/wrk_client_cert.so: bench/wrk_client_cert.c
	@mkdir -p build
	$(CC) -std=c11 -Wall -Wextra -Werror -O2 -shared -fPIC -o $@ $< -ldl -lssl

# Not part of make test: minutes of load on both cores.
# Instructions per request need valgrind (callgrind) and ab (apache2-utils, in deps).
bench: deps valgrind-deps $(MODULE) $(NGX_MODULE) build/wrk_client_cert.so
	@command -v wrk >/dev/null || { echo "bench needs wrk (apt-get install wrk)"; exit 1; }
	/usr/bin/python3 bench/run.py $(BENCH_ARGS)

# Not part of make test: reloads under load, then 10 minutes with revocations
# (about 18 minutes; SOAK_ARGS="--duration 120" for a shorter long run).
soak: deps $(MODULE) $(NGX_MODULE)
	/usr/bin/python3 tests/soak/soak.py $(SOAK_ARGS)

# ---- Hardening: fuzzing and sanitizers (not part of make test) ----
FUZZ_TARGETS = fuzz_cert fuzz_admin_json fuzz_record
FUZZ_SECONDS ?= 60
FUZZ_CFLAGS = -std=c11 -D_GNU_SOURCE -g -O1 -fsanitize=fuzzer,address,undefined -Isrc

build/fuzz/%: fuzz/%.c $(CORE_SRC) src/*.h
	@mkdir -p build/fuzz
	clang $(FUZZ_CFLAGS) -o $@ $< $(CORE_SRC) $(LIBS)

fuzz-build: $(FUZZ_TARGETS:%=build/fuzz/%)

# Each target runs FUZZ_SECONDS from a seed corpus the build generates.
fuzz-deps:
	@bash scripts/deps.sh clang libclang-rt-14-dev

fuzz: fuzz-deps fuzz-build
	@bash scripts/fuzz.sh $(FUZZ_SECONDS) $(FUZZ_TARGETS)

# ASan+UBSan: the core, the unit tests and the module; the Debian apache2
# binary loads the ASan runtime through LD_PRELOAD (see docs/security.md).
SAN_FLAGS = -fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer
build/asan/test_core: tests/unit/test_core.c $(CORE_SRC) src/*.h
	@mkdir -p build/asan
	$(CC) $(CFLAGS_COMMON) -O1 $(SAN_FLAGS) -Isrc -o $@ $< $(CORE_SRC) -lcmocka $(LIBS)

build/asan/mod_certgate.so: $(HTTPD_SRC) $(CORE_SRC) src/*.h src/httpd/*.h
	@mkdir -p build/asan/apxs
	cp $(HTTPD_SRC) $(CORE_SRC) src/*.h src/httpd/*.h build/asan/apxs/
	cd build/asan/apxs && $(APXS) -c -Wc,-std=c11 -Wc,-Wall -Wc,-Wextra -Wc,-Werror -Wc,-O1 \
	  $(SAN_FLAGS:%=-Wc,%) $(SAN_FLAGS:%=-Wl,%) -I. -o mod_certgate.so $(notdir $(HTTPD_SRC)) \
	  $(notdir $(CORE_SRC)) $(LIBS) >/dev/null
	cp build/asan/apxs/.libs/mod_certgate.so $@.tmp && mv -f $@.tmp $@

# The nginx module too, linked with a sanitized core; Debian's nginx binary
# loads the ASan runtime the same way.
build/asan/core/%.o: src/%.c src/*.h
	@mkdir -p build/asan/core
	$(CC) $(CFLAGS_COMMON) -O1 $(SAN_FLAGS) -Isrc -c -o $@ $<

# The sanitizer and fuzzing builds embed the console too.
build/asan/core/cg_admin_console.o build/asan/test_core build/asan/mod_certgate.so $(FUZZ_TARGETS:%=build/fuzz/%): build/gen/cg_console_assets.c

build/asan/libcertgate.a: $(CORE_SRC:src/%.c=build/asan/core/%.o)
	ar rcs $@ $^

build/asan/ngx_http_certgate_module.so: nginx/*.c nginx/*.h nginx/config build/asan/libcertgate.a src/*.h scripts/nginx-module.sh
	bash scripts/nginx-module.sh $@ $(CURDIR)/build/asan/libcertgate.a "$(SAN_FLAGS)"

test-asan: deps build/asan/test_core build/asan/mod_certgate.so build/asan/ngx_http_certgate_module.so
	ASAN_OPTIONS=detect_leaks=1 ./build/asan/test_core
	CERTGATE_MODULE=$(CURDIR)/build/asan/mod_certgate.so CERTGATE_SANITIZE=asan \
	  CERTGATE_NGX_MODULE=$(CURDIR)/build/asan/ngx_http_certgate_module.so \
	  $(PYTEST) -q tests/integration

valgrind-deps:
	@bash scripts/deps.sh valgrind

test-valgrind: deps valgrind-deps build/test_core $(MODULE) $(NGX_MODULE)
	valgrind -q --error-exitcode=1 --leak-check=full --errors-for-leak-kinds=definite \
	  --show-leak-kinds=definite ./build/test_core
	CERTGATE_SANITIZE=valgrind $(PYTEST) -q tests/integration/test_gate.py \
	  -k "httpd and (allowed_and_exported or unregistered or chain_mismatch or forward_headers or app_binding)"

# ---- Install and Debian packages (docs/operator-guide.md) ----
# Paths as Debian's apache2 and nginx have them; DESTDIR for staged installs.
APACHE_MODDIR ?= $(shell $(APXS) -q LIBEXECDIR 2>/dev/null || echo /usr/lib/apache2/modules)
NGINX_MODDIR ?= /usr/lib/nginx/modules

install: $(MODULE) $(NGX_MODULE)
	install -d $(DESTDIR)$(APACHE_MODDIR) $(DESTDIR)$(NGINX_MODDIR)
	install -m 644 $(MODULE) $(DESTDIR)$(APACHE_MODDIR)/mod_certgate.so
	install -m 644 $(NGX_MODULE) $(DESTDIR)$(NGINX_MODDIR)/ngx_http_certgate_module.so
	install -d $(DESTDIR)$(BINDIR)
	install -m 755 $(TOOL) $(DESTDIR)$(BINDIR)/certgatectl

# build/deb/*.deb, built from a clean copy of the tracked tree, then lintian.
deb:
	@bash scripts/package.sh build

# Builds, installs with apt, enables, serves, upgrades and purges (run by .ci/run).
test-package:
	@bash scripts/package.sh test
