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
/* Segment chains (scattered receive, multi-segment transmit). */
uint16_t tlog_pktmbuf_nb_segs(const struct rte_mbuf *m);
uint32_t tlog_pktmbuf_pkt_len(const struct rte_mbuf *m);
struct rte_mbuf *tlog_pktmbuf_next(struct rte_mbuf *m);
int tlog_pktmbuf_chain(struct rte_mbuf *head, struct rte_mbuf *tail);
uint16_t tlog_pktmbuf_tailroom(const struct rte_mbuf *m);
/* TCP segmentation offload of an IPv4/TCP frame: sets ol_flags and the header lengths. */
void tlog_pktmbuf_set_tso(struct rte_mbuf *m, uint16_t l2_len, uint16_t l3_len, uint16_t l4_len, uint16_t tso_segsz);
/* Offload bits (bit macros bindgen cannot evaluate). */
uint64_t tlog_rx_offload_scatter(void);
uint64_t tlog_tx_offload_multi_segs(void);
uint64_t tlog_tx_offload_tso(void);
uint16_t tlog_pktmbuf_headroom_default(void);
#endif
