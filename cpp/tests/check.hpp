// Minimal test harness: TEST(name) { CHECK(...); } and a main() that prints "N passed, M failed".
#pragma once

#include <cmath>
#include <cstdio>
#include <functional>
#include <sstream>
#include <string>
#include <vector>

namespace check {

struct Case {
    const char* name;
    std::function<void()> body;
};

inline std::vector<Case>& cases() {
    static std::vector<Case> all;
    return all;
}

struct Failure {
    std::string message;
};

struct Register {
    Register(const char* name, std::function<void()> body) { cases().push_back({name, std::move(body)}); }
};

template <typename A, typename B>
void equal(const A& a, const B& b, const char* expr, const char* file, int line) {
    if (a == b) return;
    std::ostringstream out;
    out << file << ":" << line << ": CHECK_EQ(" << expr << ") failed: " << a << " != " << b;
    throw Failure{out.str()};
}

inline bool contains(const std::string& text, const std::string& part) { return text.find(part) != std::string::npos; }

}  // namespace check

#define CHECK_CONCAT2(a, b) a##b
#define CHECK_CONCAT(a, b) CHECK_CONCAT2(a, b)
#define TEST(name)                                                                            \
    static void name();                                                                       \
    static const check::Register CHECK_CONCAT(register_, name)(#name, name);                  \
    static void name()

#define CHECK(cond)                                                                                        \
    do {                                                                                                   \
        if (!(cond)) throw check::Failure{std::string(__FILE__) + ":" + std::to_string(__LINE__) +        \
                                          ": CHECK(" #cond ") failed"};                                    \
    } while (0)

#define CHECK_EQ(a, b) check::equal((a), (b), #a ", " #b, __FILE__, __LINE__)

// CHECK_THROWS(statement, pidtrt::Error, e.status() == ... && check::contains(e.what(), "..."))
#define CHECK_THROWS(statement, Exception, predicate)                                                       \
    do {                                                                                                    \
        bool thrown_ = false;                                                                               \
        try {                                                                                               \
            statement;                                                                                      \
        } catch (const Exception& e) {                                                                      \
            thrown_ = true;                                                                                 \
            if (!(predicate))                                                                               \
                throw check::Failure{std::string(__FILE__) + ":" + std::to_string(__LINE__) +              \
                                     ": wrong error: " + e.what()};                                        \
        }                                                                                                   \
        if (!thrown_)                                                                                       \
            throw check::Failure{std::string(__FILE__) + ":" + std::to_string(__LINE__) + ": " #statement \
                                 " did not throw"};                                                         \
    } while (0)

int main() {
    int passed = 0, failed = 0;
    for (const check::Case& c : check::cases()) {
        try {
            c.body();
            ++passed;
            std::printf("PASS %s\n", c.name);
        } catch (const check::Failure& f) {
            ++failed;
            std::printf("FAIL %s\n  %s\n", c.name, f.message.c_str());
        } catch (const std::exception& e) {
            ++failed;
            std::printf("FAIL %s\n  unexpected exception: %s\n", c.name, e.what());
        }
    }
    std::printf("%d passed, %d failed\n", passed, failed);
    return failed == 0 && passed > 0 ? 0 : 1;
}
