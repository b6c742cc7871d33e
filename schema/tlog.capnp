# tlog wire and storage messages, format version 1.
#
# Framing: standard Cap'n Proto stream framing (segment table, then segments), no RPC.
# One TCP connection serves one vdisk. Client -> server: one HandshakeRequest, then a stream of
# ClientMessage. Server -> client: one HandshakeResponse, then a stream of ServerMessage.
# Aggregation is never sent on the wire: it is what the server seals and stores.

@0xb3f1c4d2a9e87f61;

struct HandshakeRequest {
  version @0 :UInt32;              # protocol version, 1
  vdiskId @1 :Text;                # 1..=128 bytes of [A-Za-z0-9._-]
  firstSequence @2 :UInt64;        # the first sequence the client will send
  token @3 :Text;                  # optional auth token ("" = none)
  resetFirstSequence @4 :Bool;     # jump forward to firstSequence (refused if the history holds it)
  resumeEpoch @5 :UInt64;          # a reconnecting writer's epoch (from its last handshake), 0 for
                                   # a new writer: refused (fenced) when a newer writer took over
  kind @6 :ConnectionKind;         # what the connection is for (default: a writer)
  playback @7 :PlaybackRequest;    # kind = playback: what to stream
  control @8 :ControlRequest;      # kind = control: the one request
  read @9 :Point;                  # kind = read: the point to serve (none: the newest flushed block)
}

enum ConnectionKind {
  write @0;     # stream blocks of vdiskId (the default)
  playback @1;  # stream vdiskId's history back (ServerMessage block ... playbackEnd)
  control @2;   # one request, answered by one ServerMessage control, then the server closes
  read @3;      # serve vdiskId as of a point on demand: ServerMessage index parts first (the
                # path's index up to the point), then for each ClientMessage fetch the blocks
                # of that aggregation up to the point (block ... playbackEnd)
}

# A point in a vdisk's history: the image after the last block it covers.
struct Point {
  union {
    none @0 :Void;          # the start (as "from") or the head (as "to")
    sequence @1 :UInt64;    # after the block with this sequence
    time @2 :UInt64;        # after the last block stamped at or before this time (ns)
    checkpoint @3 :Text;    # at this checkpoint
  }
}

struct PlaybackRequest {
  from @0 :Point;           # stream the blocks after this point
  to @1 :Point;             # up to and including the last block of this point
  follow @2 :Bool;          # then every newly flushed block, exactly once, until the client leaves
}

struct CheckpointRequest {
  name @0 :Text;            # 1..=64 bytes of [A-Za-z0-9._-]
  vdisks @1 :List(Text);    # a consistency group: intake of all of them is held for the instant
}

struct ForkRequest {
  vdisk @0 :Text;           # the parent
  new @1 :Text;             # the fork to create
  at @2 :Point;             # the fork point on the parent (none: its newest flushed block)
}

struct RebaseRequest {
  vdisk @0 :Text;           # the fork
  onto @1 :Text;            # its parent
  at @2 :Point;             # the parent's point to rebase onto (none: its newest flushed block)
}

struct DeleteRequest {
  vdisk @0 :Text;
  force @1 :Bool;           # delete a vdisk that has forks (they keep what they stand on)
}

struct ControlRequest {
  union {
    checkpoint @0 :CheckpointRequest;
    history @1 :Text;       # the vdisk whose history summary to return
    fork @2 :ForkRequest;
    rebase @3 :RebaseRequest;
    delete @4 :DeleteRequest;
    tree @5 :Void;          # every vdisk as a tree
    status @6 :Void;        # what the engine is doing (tlog status): its metrics, as JSON
  }
}

struct CheckpointMark {
  vdisk @0 :Text;
  sequence @1 :UInt64;      # the last sequence it covers (meaningful when hasBlocks)
  hasBlocks @2 :Bool;
  time @3 :UInt64;          # when it was taken, ns
}

struct ControlResponse {
  union {
    checkpoint @0 :List(CheckpointMark);
    history @1 :Text;       # the summary as JSON (tlog history --json prints it)
    error @2 :Text;         # why the request failed
    done @3 :Text;          # fork, rebase, delete, tree: what was done, as JSON
  }
}

struct PlaybackEnd {
  lastSequence @0 :UInt64;  # the last block streamed (meaningful when hasBlocks)
  hasBlocks @1 :Bool;
}

enum HandshakeStatus {
  ok @0;
  badRequest @1;
  badVersion @2;
  badVdisk @3;
  unauthorized @4;
  fenced @5;
  internalError @6;
}

struct HandshakeResponse {
  version @0 :UInt32;
  status @1 :HandshakeStatus;
  lastFlushedSequence @2 :UInt64;  # 0 when nothing is flushed yet
  hasFlushed @3 :Bool;             # false when the vdisk has no flushed block
  message @4 :Text;
  epoch @5 :UInt64;                # the writer epoch of this connection (present it on reconnect)
}

enum Operation {
  write @0;        # set `data` at byte offset lba*512
  writeZeroes @1;  # zero (trim) `size` bytes at byte offset lba*512; `data` is empty
}

struct Block {
  sequence @0 :UInt64;
  lba @1 :UInt64;        # in 512-byte sectors
  size @2 :UInt64;       # bytes covered by the operation
  hash @3 :Data;         # BLAKE3-256 of `data` (32 bytes)
  data @4 :Data;
  timestamp @5 :UInt64;  # nanoseconds since the Unix epoch
  operation @6 :UInt16;  # an Operation ordinal; unknown values are refused
}

struct ClientMessage {
  union {
    block @0 :Block;
    forceFlush @1 :Void;
    disconnect @2 :Void;
    fetch @3 :UInt32;    # kind = read: the aggregation at this position of the index sent
  }
}

# kind = read: a part of the index of the path up to the point, in order.
struct IndexPart {
  entries @0 :Data;      # `count` index entry bodies (history/index.rs: version, fields,
                         # extents; no MAC), concatenated
  count @1 :UInt32;
  done @2 :Bool;         # the last part
}

struct SequenceRange {
  first @0 :UInt64;
  last @1 :UInt64;       # inclusive
}

enum ErrorCode {
  badHash @0;
  outOfOrder @1;
  tooLarge @2;
  unknownOperation @3;
  badMessage @4;
  fenced @5;
  notAttached @6;
  internalError @7;
  badSize @8;
  outOfRange @9;         # lba * 512 + size past server.max_vdisk_bytes
  sequenceExhausted @10; # sequence 2^64 - 1 was taken: the sequence space ends there
}

enum NoticeKind {
  waiting @0;   # blocks are received but cannot be made durable yet (the message says why)
  resumed @1;   # durable writes go on again
}

struct Notice {
  kind @0 :NoticeKind;
  message @1 :Text;
}

struct ServerError {
  code @0 :ErrorCode;
  sequence @1 :UInt64;          # the offending block's sequence, 0 if none
  expectedSequence @2 :UInt64;  # for outOfOrder: the sequence the server expects
  message @3 :Text;
}

struct ServerMessage {
  union {
    received @0 :SequenceRange;
    flushed @1 :SequenceRange;
    forceFlushReceived @2 :Void;
    error @3 :ServerError;
    notice @4 :Notice;   # not an error: the server tells why acks are slow, and when they resume
    block @5 :Block;     # playback: the next block of the history
    playbackEnd @6 :PlaybackEnd;  # playback: nothing more (not sent in follow mode)
    head @7 :UInt64;     # playback, follow: the vdisk's newest flushed sequence, when caught up
    control @8 :ControlResponse;  # control: the answer
    index @9 :IndexPart;          # read: the index up to the point, in parts
  }
}

struct Aggregation {
  formatVersion @0 :UInt32;      # 1
  vdiskId @1 :Text;
  firstSequence @2 :UInt64;
  lastSequence @3 :UInt64;
  timestamp @4 :UInt64;          # ns since the Unix epoch, when sealed
  blocks @5 :List(Block);
  prev @6 :Data;                 # key of the previous aggregation, 32 zero bytes for the first
  epoch @7 :UInt64;
}
