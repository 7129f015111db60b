// Errors raised by the engine core. Every failure on bad input is an optune::Error with a message that says what
// was wrong, where, and how to fix it; the N-API layer turns it into a JS Error. The core never aborts on bad input.
#pragma once
#include <stdexcept>
#include <string>

namespace optune {

struct Error : std::runtime_error {
  explicit Error(const std::string& msg) : std::runtime_error(msg) {}
};

// check(cond, msg): throw optune::Error(msg) when cond is false. The message is built only on failure.
#define OPTUNE_CHECK(cond, msg_expr)                                   \
  do {                                                                 \
    if (!(cond)) throw ::optune::Error(std::string() + msg_expr);      \
  } while (0)

}  // namespace optune
