/* SPDX-License-Identifier: MIT */
/* zc_tls_tx_offloaded(): kernel TLS detection. */
#define _GNU_SOURCE
#include "harness.h"
#include "zc.h"

#include <netinet/tcp.h>

#ifndef TCP_ULP
#define TCP_ULP 31
#endif
#ifndef SOL_TLS
#define SOL_TLS 282
#endif
#ifndef TLS_TX
#define TLS_TX 1
#endif

/* struct tls12_crypto_info_aes_gcm_128 from linux/tls.h, spelled out */
struct gcm128_info {
	uint16_t version;
	uint16_t cipher_type;
	unsigned char iv[8];
	unsigned char key[16];
	unsigned char salt[4];
	unsigned char rec_seq[8];
};

static void plain_sockets(void)
{
	int s, r;

	for (int kind = 0; kind < 2; kind++) {
		REQUIRE(h_pair(kind, &s, &r) == 0);
		CHECK_EQ(zc_tls_tx_offloaded(s), 0);
		close(s);
		close(r);
	}
	CHECK_RC(zc_tls_tx_offloaded(-1), -EBADF);
	h_ran++;
}

/* With the kernel's tls module, keys installed on TX make it report 1 and
 * the peer receives records, not the plaintext. */
static void kernel_tls(void)
{
	struct gcm128_info info = { .version = 0x0303, .cipher_type = 51 };
	const char msg[] = "plaintext that must not be seen";
	char got[256];
	ssize_t n;
	int s, r;

	REQUIRE(h_tcp_pair(&s, &r) == 0);
	if (setsockopt(s, IPPROTO_TCP, TCP_ULP, "tls", sizeof("tls")) < 0) {
		fprintf(stderr, "  no kernel TLS here (%s): skipped\n", strerror(errno));
		close(s);
		close(r);
		return;
	}
	CHECK_EQ(zc_tls_tx_offloaded(s), 0); /* attached, no keys yet */
	REQUIRE(setsockopt(s, SOL_TLS, TLS_TX, &info, sizeof(info)) == 0);
	CHECK_EQ(zc_tls_tx_offloaded(s), 1);
	CHECK_EQ(send(s, msg, sizeof(msg), 0), (ssize_t)sizeof(msg));
	n = (ssize_t)h_recv_upto(r, got, sizeof(got), 2000);
	CHECK(n > (ssize_t)sizeof(msg)); /* a record header and tag around it */
	CHECK(memmem(got, (size_t)n, msg, sizeof(msg) - 1) == NULL);
	close(s);
	close(r);
	h_ran++;
}

int main(void)
{
	h_init(30);
	plain_sockets();
	kernel_tls();
	return h_result("test_tls");
}
