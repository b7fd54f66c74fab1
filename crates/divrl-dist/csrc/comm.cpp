// A C interface to libtorch's c10d rendezvous and collectives, for divrl-dist's Rust side:
// a TCPStore (rank 0 serves it, every rank connects) and c10d's StoreCollectives on top of it
// (barrier, all-gather), each call bounded by a timeout. Errors never cross the boundary as C++
// exceptions: each function returns 0 on success, or 1 with a malloc'ed message in *err.
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#include <torch/csrc/distributed/c10d/control_collectives/StoreCollectives.hpp>

#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

struct DivrlComm {
  c10::intrusive_ptr<c10d::TCPStore> store;
  c10d::StoreCollectives collectives;
  std::chrono::milliseconds timeout;
  int32_t rank;
  int32_t world;
};

namespace {

char* copy_message(const char* what) {
  size_t n = std::strlen(what);
  char* out = static_cast<char*>(std::malloc(n + 1));
  if (out != nullptr) {
    std::memcpy(out, what, n + 1);
  }
  return out;
}

// c10::Error's what() carries a C++ backtrace; its message alone is the one line a user needs.
char* error_message(const std::exception& e) {
  if (auto* c10 = dynamic_cast<const c10::Error*>(&e)) {
    return copy_message(c10->what_without_backtrace());
  }
  return copy_message(e.what());
}

template <typename F>
int guarded(char** err, F&& f) {
  try {
    f();
    return 0;
  } catch (const std::exception& e) {
    *err = error_message(e);
  } catch (...) {
    *err = copy_message("unknown C++ exception in c10d");
  }
  return 1;
}

}  // namespace

extern "C" {

int divrl_comm_new(
    const char* host,
    uint16_t port,
    int32_t rank,
    int32_t world,
    int32_t serve,
    int64_t timeout_ms,
    DivrlComm** out,
    char** err) {
  return guarded(err, [&] {
    // serve: this process hosts the store (rank 0, unless a launcher such as torchrun's agent
    // already does, in which case every rank is a client).
    c10d::TCPStoreOptions opts;
    opts.port = port;
    opts.isServer = serve != 0;
    opts.numWorkers = static_cast<size_t>(world);
    // Every client counts itself in (TCPStore's init key); the server waits for all of them.
    opts.waitWorkers = true;
    opts.timeout = std::chrono::milliseconds(timeout_ms);
    auto store = c10::make_intrusive<c10d::TCPStore>(std::string(host), opts);
    *out = new DivrlComm{store, c10d::StoreCollectives(store, rank, world),
                         std::chrono::milliseconds(timeout_ms), rank, world};
  });
}

void divrl_comm_free(DivrlComm* comm) { delete comm; }

// Leaves the run. Rank 0 serves the store, so it must not go before the others have finished
// their last collective: every rank counts itself out, and rank 0 waits (at most the timeout)
// until all have.
// wait_ms bounds rank 0's wait (the timeout for a clean finish, a short grace when a failing
// rank leaves, so that a dead peer does not hold it for a whole timeout).
int divrl_comm_finish(DivrlComm* comm, int64_t wait_ms, char** err) {
  return guarded(err, [&] {
    const std::string key = "divrl/finished";
    comm->store->add(key, 1);
    if (comm->rank != 0) {
      return;
    }
    auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(wait_ms);
    while (comm->store->add(key, 0) < comm->world) {
      if (std::chrono::steady_clock::now() > deadline) {
        throw std::runtime_error(
            "not every rank finished within the timeout; leaving without them");
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
  });
}

void divrl_comm_free_buffer(void* p) { std::free(p); }

int divrl_comm_barrier(DivrlComm* comm, const char* key, char** err) {
  return guarded(err, [&] { comm->collectives.barrier(key, comm->timeout, true); });
}

// Every rank's `data` (rank order), concatenated into one malloc'ed buffer *out of *out_len
// bytes, with each rank's byte count in lens[0..world).
int divrl_comm_all_gather(
    DivrlComm* comm,
    const char* key,
    const uint8_t* data,
    size_t len,
    uint8_t** out,
    size_t* out_len,
    size_t* lens,
    char** err) {
  return guarded(err, [&] {
    std::vector<uint8_t> mine(data, data + len);
    auto all = comm->collectives.allGather(key, mine, comm->timeout);
    if (all.size() != static_cast<size_t>(comm->world)) {
      throw std::runtime_error(
          "all-gather returned " + std::to_string(all.size()) + " parts for a world of " +
          std::to_string(comm->world));
    }
    size_t total = 0;
    for (const auto& part : all) {
      total += part.size();
    }
    uint8_t* buffer = static_cast<uint8_t*>(std::malloc(total == 0 ? 1 : total));
    if (buffer == nullptr) {
      throw std::bad_alloc();
    }
    size_t at = 0;
    for (size_t r = 0; r < all.size(); ++r) {
      std::memcpy(buffer + at, all[r].data(), all[r].size());
      lens[r] = all[r].size();
      at += all[r].size();
    }
    *out = buffer;
    *out_len = total;
  });
}

}  // extern "C"
