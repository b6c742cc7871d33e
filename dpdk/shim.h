/* C shim for DPDK's static-inline functions and macros, so Rust can call them. */
#ifndef TLOG_DPDK_SHIM_H
#define TLOG_DPDK_SHIM_H
#include <stdint.h>
struct rte_mbuf;
struct rte_mempool;

int tlog_rte_errno(void);
uint16_t tlog_rx_burst(uint16_t port, uint16_t queue, struct rte_mbuf **pkts, uint16_t n);
uint16_t tlog_tx_burst(uint16_t port, uint16_t queue, struct rte_mbuf **pkts, uint16_t n);
struct rte_mbuf *tlog_pktmbuf_alloc(struct rte_mempool *mp);
void tlog_pktmbuf_free(struct rte_mbuf *m);
uint8_t *tlog_pktmbuf_data(struct rte_mbuf *m);
uint16_t tlog_pktmbuf_data_len(const struct rte_mbuf *m);
uint8_t *tlog_pktmbuf_append(struct rte_mbuf *m, uint16_t len);
uint16_t tlog_pktmbuf_default_buf_size(void);
#endif
