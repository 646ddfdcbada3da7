/* SPDX-License-Identifier: MIT */
/* Is a socket's TX side encrypted by the kernel (kernel TLS)? */
#define _GNU_SOURCE
#include "zc.h"

#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <string.h>
#include <sys/socket.h>

/* From the kernel's UAPI headers, for build images without linux/tls.h. */
#ifndef TCP_ULP
#define TCP_ULP 31 /* include/uapi/linux/tcp.h */
#endif
#ifndef SOL_TLS
#define SOL_TLS 282 /* include/linux/socket.h */
#endif
#ifndef TLS_TX
#define TLS_TX 1 /* include/uapi/linux/tls.h */
#endif

int zc_tls_tx_offloaded(int sock)
{
	char ulp[16] = { 0 };
	/* struct tls_crypto_info: version, then cipher_type (0: none) */
	unsigned char info[64] = { 0 };
	socklen_t len = sizeof(ulp);
	unsigned short cipher;

	if (getsockopt(sock, IPPROTO_TCP, TCP_ULP, ulp, &len) < 0) {
		/* not TCP (AF_UNIX), or a kernel without ULPs: no kernel TLS */
		if (errno == EOPNOTSUPP || errno == ENOPROTOOPT)
			return 0;
		return -errno;
	}
	if (strncmp(ulp, "tls", sizeof(ulp)) != 0)
		return 0;
	len = sizeof(info);
	if (getsockopt(sock, SOL_TLS, TLS_TX, info, &len) < 0)
		return 0; /* the ULP is attached but TX keys are not set (yet) */
	if (len < 4)
		return 0; /* too short to hold a cipher_type */
	memcpy(&cipher, info + 2, sizeof(cipher));
	return cipher != 0;
}
