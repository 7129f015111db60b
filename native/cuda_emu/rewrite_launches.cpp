// Build tool of the CUDA emulator: turns a .cu source into C++ a host compiler takes (emu.h, cuda_runtime.h).
//   rewrite_launches IN OUT
// Two rewrites, nothing else changes (a #line keeps diagnostics pointing into IN, and line breaks are kept):
//   kernel<<<grid, block[, smem[, stream]]>>>(args)
//     -> optune_emu::launch_kernel(nullptr, "kernel", optune_emu::dim(dim3(grid)), optune_emu::dim(dim3(block)),
//          smem, stream, optune_emu::bind_args([=](const auto&... a) { kernel(a...); }, args))
//   extern __shared__ [__align__(n)] T name[];  ->  T* name = reinterpret_cast<T*>(optune_emu::dynamic_shared());
#include <cctype>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

namespace {

[[noreturn]] void fail(const std::string& file, const std::string& what) {
  std::cerr << "rewrite_launches: " << file << ": " << what << "\n";
  std::exit(1);
}

bool ident_char(char c) { return std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == ':'; }

// The index just past the bracket matching s[open] ('(' or '<'), skipping nested brackets of all kinds.
size_t past_match(const std::string& s, size_t open) {
  int depth = 0;
  for (size_t i = open; i < s.size(); i++) {
    const char c = s[i];
    if (c == '(' || c == '[' || c == '{' || (c == '<' && s[open] == '<')) depth++;
    if (c == ')' || c == ']' || c == '}' || (c == '>' && s[open] == '<')) depth--;
    if (depth == 0) return i + 1;
  }
  return std::string::npos;
}

// Splits at the commas outside any bracket.
std::vector<std::string> split_top(const std::string& s) {
  std::vector<std::string> parts(1);
  int depth = 0;
  for (char c : s) {
    if (c == '(' || c == '[' || c == '{') depth++;
    if (c == ')' || c == ']' || c == '}') depth--;
    if (c == ',' && depth == 0)
      parts.emplace_back();
    else
      parts.back() += c;
  }
  return parts;
}

std::string newlines_in(const std::string& s) {
  std::string out;
  for (char c : s)
    if (c == '\n') out += '\n';
  return out;
}

std::string rewrite_launches(const std::string& file, std::string s) {
  for (size_t at = s.find("<<<"); at != std::string::npos; at = s.find("<<<", at)) {
    // the kernel expression: an identifier (with ::), maybe followed by template arguments
    size_t begin = at;
    while (begin > 0 && std::isspace(static_cast<unsigned char>(s[begin - 1]))) begin--;
    if (begin > 0 && s[begin - 1] == '>') {
      int depth = 0;
      do {
        begin--;
        if (s[begin] == '>') depth++;
        if (s[begin] == '<') depth--;
      } while (begin > 0 && depth > 0);
    }
    while (begin > 0 && ident_char(s[begin - 1])) begin--;
    const std::string kernel = s.substr(begin, at - begin);
    const size_t close = s.find(">>>", at);
    if (kernel.empty() || close == std::string::npos) fail(file, "a <<< without a kernel name or >>>");
    const std::string config = s.substr(at + 3, close - at - 3);
    size_t open = close + 3;
    while (open < s.size() && std::isspace(static_cast<unsigned char>(s[open]))) open++;
    if (open >= s.size() || s[open] != '(') fail(file, "no argument list after >>> of " + kernel);
    const size_t end = past_match(s, open);
    if (end == std::string::npos) fail(file, "unbalanced arguments of " + kernel);
    const std::string args = s.substr(open + 1, end - open - 2);
    std::vector<std::string> cfg = split_top(config);
    if (cfg.size() < 2 || cfg.size() > 4) fail(file, "a launch of " + kernel + " with " + config);
    while (cfg.size() < 4) cfg.push_back(cfg.size() == 2 ? "0" : "nullptr");
    const bool no_args = args.find_first_not_of(" \t\r\n") == std::string::npos;
    const std::string call = "optune_emu::launch_kernel(nullptr, \"" + kernel + "\", optune_emu::dim(dim3(" + cfg[0] +
                             ")), optune_emu::dim(dim3(" + cfg[1] + ")), " + cfg[2] + ", " + cfg[3] +
                             ", optune_emu::bind_args([=](const auto&... a) { " + kernel + "(a...); }" +
                             (no_args ? "" : ", ") + args + "))" + newlines_in(config) +
                             newlines_in(s.substr(close, open - close));
    s.replace(begin, end - begin, call);
    at = begin + call.size();
  }
  return s;
}

std::string rewrite_dynamic_shared(const std::string& file, std::string s) {
  const std::string key = "extern __shared__";
  for (size_t at = s.find(key); at != std::string::npos; at = s.find(key, at)) {
    const size_t semi = s.find(';', at);
    if (semi == std::string::npos) fail(file, "an extern __shared__ without ;");
    std::string decl = s.substr(at + key.size(), semi - at - key.size());
    const size_t align = decl.find("__align__(");
    if (align != std::string::npos) decl.erase(align, decl.find(')', align) + 1 - align);
    const size_t bracket = decl.find('[');
    if (bracket == std::string::npos) fail(file, "an extern __shared__ that is not an array");
    size_t name_end = bracket;
    while (name_end > 0 && std::isspace(static_cast<unsigned char>(decl[name_end - 1]))) name_end--;
    size_t name_begin = name_end;
    while (name_begin > 0 && ident_char(decl[name_begin - 1])) name_begin--;
    const std::string name = decl.substr(name_begin, name_end - name_begin);
    std::string type = decl.substr(0, name_begin);
    while (!type.empty() && std::isspace(static_cast<unsigned char>(type.front()))) type.erase(0, 1);
    while (!type.empty() && std::isspace(static_cast<unsigned char>(type.back()))) type.pop_back();
    const std::string repl = type + "* " + name + " = reinterpret_cast<" + type + "*>(optune_emu::dynamic_shared())";
    s.replace(at, semi - at, repl);
    at += repl.size();
  }
  return s;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 3) {
    std::cerr << "usage: rewrite_launches IN.cu OUT.cpp\n";
    return 2;
  }
  std::ifstream in(argv[1], std::ios::binary);
  if (!in) fail(argv[1], "cannot read");
  std::stringstream buf;
  buf << in.rdbuf();
  std::string s = rewrite_dynamic_shared(argv[1], rewrite_launches(argv[1], buf.str()));
  std::ofstream out(argv[2], std::ios::binary);
  out << "#line 1 \"" << argv[1] << "\"\n" << s;
  if (!out) fail(argv[2], "cannot write");
  return 0;
}
