# mod_certgate: core library, httpd module, tests.
APXS    ?= apxs
CC      ?= cc
PYTEST  ?= /usr/bin/python3 -m pytest
CFLAGS_COMMON = -std=c11 -D_GNU_SOURCE -Wall -Wextra -Werror -O2 -g -fPIC
CORE_SRC = src/cg_fp.c src/cg_reg.c src/cg_decide.c src/cg_store.c src/cg_tls.c src/cg_cert.c src/cg_policy.c src/cg_admin.c src/cg_cache.c src/cg_sub.c
CORE_OBJ = $(CORE_SRC:src/%.c=build/core/%.o)
CORE_LIB = build/libcertgate.a
LIBS     = -ljansson -lhiredis -lssl -lcrypto -lpthread
MODULE   = build/mod_certgate.so

.PHONY: all deps module unit test test-unit test-integration demo demo-stop clean

all: module

deps:
	@bash scripts/deps.sh

build/core/%.o: src/%.c src/*.h
	@mkdir -p build/core
	$(CC) $(CFLAGS_COMMON) -Isrc -c -o $@ $<

$(CORE_LIB): $(CORE_OBJ)
	ar rcs $@ $^

# apxs compiles the adapter with httpd's flags; we add ours and link the core.
$(MODULE): mod_certgate.c $(CORE_LIB) src/*.h
	@mkdir -p build/apxs
	cp mod_certgate.c build/apxs/mod_certgate.c
	cd build/apxs && $(APXS) -c -Wc,-std=c11 -Wc,-Wall -Wc,-Wextra -Wc,-Werror \
	  -I$(CURDIR)/src -o mod_certgate.so mod_certgate.c $(CURDIR)/$(CORE_LIB) $(LIBS) >/dev/null
	cp build/apxs/.libs/mod_certgate.so $@

module: $(MODULE)

build/test_core: tests/unit/test_core.c $(CORE_LIB)
	$(CC) $(CFLAGS_COMMON) -Isrc -o $@ $< $(CORE_LIB) -lcmocka $(LIBS)

unit: build/test_core

test-unit: build/test_core
	./build/test_core

test-integration: $(MODULE)
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
