#include "host_memory.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "error.h"

namespace optune {

namespace {

// A "Name:   123 kB" line of /proc/meminfo, in bytes; 0 when absent.
size_t meminfo_bytes(const std::string& text, const std::string& name) {
  const size_t at = text.find("\n" + name + ":");
  if (at == std::string::npos) return 0;
  std::istringstream in(text.substr(at + name.size() + 2));
  size_t kb = 0;
  in >> kb;
  return kb * 1024;
}

// The first number in a file ("max" or unreadable: 0, meaning no limit known).
size_t file_number(const std::string& path) {
  std::ifstream in(path);
  std::string word;
  if (!(in >> word) || word == "max") return 0;
  try {
    return static_cast<size_t>(std::stoull(word));
  } catch (...) {
    return 0;
  }
}

// A "name value" line of a cgroup memory.stat file; 0 when absent.
size_t stat_bytes(const std::string& path, const std::string& name) {
  std::ifstream in(path);
  std::string key;
  size_t value = 0;
  while (in >> key >> value)
    if (key == name) return value;
  return 0;
}

struct CgroupLevel {
  std::string dir;
  bool v2;
};

// The folders of the process's memory cgroup, from its own up to the hierarchy's root, as /proc/self/cgroup names
// it: "0::<path>" (v2, under /sys/fs/cgroup) or "N:...memory...:<path>" (v1, under /sys/fs/cgroup/memory). Levels
// that are not visible here (another cgroup namespace) are skipped.
std::vector<CgroupLevel> memory_cgroup_levels() {
  std::ifstream in("/proc/self/cgroup");
  std::string line;
  std::vector<CgroupLevel> levels;
  while (std::getline(in, line)) {
    const size_t a = line.find(':'), b = line.find(':', a + 1);
    if (a == std::string::npos || b == std::string::npos) continue;
    const std::string controllers = line.substr(a + 1, b - a - 1), path = line.substr(b + 1);
    const bool v2 = controllers.empty();
    if (!v2 && (',' + controllers + ',').find(",memory,") == std::string::npos) continue;
    const std::string root = v2 ? "/sys/fs/cgroup" : "/sys/fs/cgroup/memory";
    std::string rel = path;
    for (;;) {  // each level that is visible here (a cgroup namespace hides those above its own root)
      const std::string dir = rel.empty() || rel == "/" ? root : root + rel;
      if (std::ifstream(dir + "/memory.stat")) levels.push_back({dir, v2});
      if (rel.empty() || rel == "/") break;
      rel = rel.substr(0, rel.find_last_of('/'));
    }
  }
  return levels;
}

std::string gib(size_t bytes) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.2f", static_cast<double>(bytes) / (1024.0 * 1024 * 1024));
  return buf;
}

}  // namespace

size_t available_host_bytes() {
  size_t avail = 0;
  {
    std::ifstream in("/proc/meminfo");
    std::stringstream text;
    text << "\n" << in.rdbuf();
    const std::string t = text.str();
    const size_t mem = meminfo_bytes(t, "MemAvailable");
    if (mem > 0) avail = mem + meminfo_bytes(t, "SwapFree");
  }
  // The limits of the process's memory cgroup and of its ancestors (the OOM killer acts on each): what is left
  // under the tightest. Their usage counts the page cache, which the kernel reclaims before killing anything.
  for (const CgroupLevel& level : memory_cgroup_levels()) {
    const size_t limit = file_number(level.dir + (level.v2 ? "/memory.max" : "/memory.limit_in_bytes"));
    if (limit == 0 || limit >= (size_t(1) << 60)) continue;  // no limit here (v1 spells it as a huge number)
    size_t used = file_number(level.dir + (level.v2 ? "/memory.current" : "/memory.usage_in_bytes"));
    const size_t cache = stat_bytes(level.dir + "/memory.stat", level.v2 ? "file" : "cache");
    used = used > cache ? used - cache : 0;
    const size_t left = limit > used ? limit - used : 0;
    avail = avail == 0 ? left : std::min(avail, left);
  }
  // A budget of the user's (a shared machine), or a test's: OPTUNE_MEMORY_LIMIT bytes at most.
  if (const char* env = std::getenv("OPTUNE_MEMORY_LIMIT")) {
    char* end = nullptr;
    const unsigned long long cap = std::strtoull(env, &end, 10);
    if (end != env && *end == '\0' && cap > 0) avail = avail == 0 ? cap : std::min<size_t>(avail, cap);
  }
  return avail;
}

void check_host_memory(size_t bytes, const std::string& what, const std::string& fix) {
  if (bytes == 0) return;  // nothing to allocate: spare the reads of /proc and /sys
  const size_t avail = available_host_bytes();
  if (avail == 0 || bytes <= avail) return;
  throw Error(what + ": " + gib(bytes) + " GiB of memory needed, but only " + gib(avail) + " GiB is available; " + fix);
}

}  // namespace optune
