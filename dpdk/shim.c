/* C shim for DPDK's static-inline functions and macros (built by build.rs with cc, feature
 * "dpdk", with the whole `pkg-config --cflags libdpdk`). */
#include <rte_errno.h>
#include <rte_ethdev.h>
#include <rte_mbuf.h>
#include "shim.h"

int tlog_rte_errno(void) { return rte_errno; }
uint16_t tlog_rx_burst(uint16_t port, uint16_t queue, struct rte_mbuf **pkts, uint16_t n) { return rte_eth_rx_burst(port, queue, pkts, n); }
uint16_t tlog_tx_burst(uint16_t port, uint16_t queue, struct rte_mbuf **pkts, uint16_t n) { return rte_eth_tx_burst(port, queue, pkts, n); }
struct rte_mbuf *tlog_pktmbuf_alloc(struct rte_mempool *mp) { return rte_pktmbuf_alloc(mp); }
void tlog_pktmbuf_free(struct rte_mbuf *m) { rte_pktmbuf_free(m); }
uint8_t *tlog_pktmbuf_data(struct rte_mbuf *m) { return rte_pktmbuf_mtod(m, uint8_t *); }
uint16_t tlog_pktmbuf_data_len(const struct rte_mbuf *m) { return rte_pktmbuf_data_len(m); }
uint8_t *tlog_pktmbuf_append(struct rte_mbuf *m, uint16_t len) { return (uint8_t *)rte_pktmbuf_append(m, len); }
uint16_t tlog_pktmbuf_default_buf_size(void) { return RTE_MBUF_DEFAULT_BUF_SIZE; }
uint16_t tlog_pktmbuf_nb_segs(const struct rte_mbuf *m) { return m->nb_segs; }
uint32_t tlog_pktmbuf_pkt_len(const struct rte_mbuf *m) { return rte_pktmbuf_pkt_len(m); }
struct rte_mbuf *tlog_pktmbuf_next(struct rte_mbuf *m) { return m->next; }
int tlog_pktmbuf_chain(struct rte_mbuf *head, struct rte_mbuf *tail) { return rte_pktmbuf_chain(head, tail); }
uint16_t tlog_pktmbuf_tailroom(const struct rte_mbuf *m) { return rte_pktmbuf_tailroom(m); }
void tlog_pktmbuf_set_tso(struct rte_mbuf *m, uint16_t l2_len, uint16_t l3_len, uint16_t l4_len, uint16_t tso_segsz) {
	m->ol_flags |= RTE_MBUF_F_TX_TCP_SEG | RTE_MBUF_F_TX_IPV4 | RTE_MBUF_F_TX_IP_CKSUM;
	m->l2_len = l2_len;
	m->l3_len = l3_len;
	m->l4_len = l4_len;
	m->tso_segsz = tso_segsz;
}
uint64_t tlog_rx_offload_scatter(void) { return RTE_ETH_RX_OFFLOAD_SCATTER; }
uint64_t tlog_tx_offload_multi_segs(void) { return RTE_ETH_TX_OFFLOAD_MULTI_SEGS; }
uint64_t tlog_tx_offload_tso(void) { return RTE_ETH_TX_OFFLOAD_TCP_TSO | RTE_ETH_TX_OFFLOAD_IPV4_CKSUM | RTE_ETH_TX_OFFLOAD_TCP_CKSUM; }
uint16_t tlog_pktmbuf_headroom_default(void) { return RTE_PKTMBUF_HEADROOM; }
