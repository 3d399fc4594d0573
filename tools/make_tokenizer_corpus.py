#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
# Writes the tokenizer test corpus (one JSON object {"text": ...} per line)
# covering what issue 3 lists: English prose, code with tabs and indentation,
# runs of spaces and newlines (\n, \r\n), numbers, contractions in all cases,
# CJK, Arabic, Hindi, emoji with modifiers and ZWJ, combining characters that
# NFC changes, added tokens inside text, and long inputs. Deterministic
# (fixed seed). English prose comes from the Debian `fortunes` package when
# installed (apt-get install fortunes); without it, built-in sentences only.
# Usage: tools/make_tokenizer_corpus.py > tests/golden/tokenizer/corpus.jsonl
import glob
import json
import os
import random
import sys

rng = random.Random(20261126)
texts = []


def add(t, kind):
    texts.append({"kind": kind, "text": t})


# ---- English prose --------------------------------------------------------------
PROSE = [
    "The quick brown fox jumps over the lazy dog.",
    "Hello world",
    "Hello, World! How are you today?",
    "It was the best of times, it was the worst of times, it was the age of wisdom.",
    "In the beginning God created the heaven and the earth.",
    "Call me Ishmael. Some years ago - never mind how long precisely - having little money in my purse...",
    "To be, or not to be: that is the question.",
    "She sells sea-shells on the sea-shore; the shells she sells are sea-shells, I'm sure.",
    "A journey of a thousand miles begins with a single step.",
    "E-mail me at someone@example.com or visit https://example.org/path?q=1&r=2#frag.",
    "Mr. O'Neil's dog (a mutt) barked -- loudly -- at 3:45 a.m.",
    "\"Quoted text,\" he said, 'and single quotes'.",
    "Hyphenated-words, em\u2014dashes, en\u2013dashes and ellipses\u2026 all here.",
    "UPPERCASE lowercase MiXeD CaSe camelCase snake_case kebab-case",
]
for t in PROSE:
    add(t, "english")

fortune_files = sorted(glob.glob("/usr/share/games/fortunes/*"))
fortunes = []
for f in fortune_files:
    if "." in os.path.basename(f) or os.path.basename(f) in ("off",):
        continue
    try:
        data = open(f, encoding="utf-8").read()
    except (UnicodeDecodeError, IsADirectoryError):
        continue
    for chunk in data.split("\n%\n"):
        chunk = chunk.strip("\n")
        if 20 <= len(chunk) <= 600:
            fortunes.append(chunk)
rng.shuffle(fortunes)
for t in fortunes[:170]:
    add(t, "english")

# ---- code ------------------------------------------------------------------------
CODE = [
    "def add(a, b):\n    return a + b\n",
    "def f(x):\n\tif x > 0:\n\t\treturn x\n\treturn -x\n",
    "int main(void) {\n\tprintf(\"hello\\n\");\n\treturn 0;\n}\n",
    "all: build\n\nbuild:\n\t$(CC) -O2 -o app main.c\n\tstrip app\n",
    "package main\n\nimport \"fmt\"\n\nfunc main() {\n\tfor i := 0; i < 10; i++ {\n\t\tfmt.Println(i)\n\t}\n}\n",
    "    if (x) {\n        y();\n    }\n",
    "class Foo:\n    def __init__(self):\n        self.x = [1, 2, 3]\n        self.d = {'a': 1, \"b\": 2}\n",
    "const f = async (a, b) => { await g(a ?? b); return a?.c || b!; };",
    "SELECT id, name FROM users WHERE age >= 18 AND name LIKE '%o%' ORDER BY id DESC;",
    "<html>\n  <body>\n    <p class=\"x\">Hi &amp; bye</p>\n  </body>\n</html>\n",
    "#include <stdio.h>\r\nint main() {\r\n    return 0;\r\n}\r\n",
    "for (int i = 0; i < n; ++i) a[i] += b[i] * c[i]; // fused multiply-add\n",
    "x=1;y=2;z=x+y*3/4-5%6**7//8",
    "fn main() -> Result<(), Box<dyn Error>> {\n    let v: Vec<u8> = vec![0xFF; 16];\n    Ok(())\n}\n",
    "\t\t\t\tdeeply\n\t\t\t\t\tindented\n\t \t mixed\n",
    "{\"key\": [1, 2.5, -3e10, true, null], \"nested\": {\"a\": \"b\"}}",
    "$ ls -la | grep '^d' | awk '{print $9}' > dirs.txt 2>&1 &&  echo done",
    "diff --git a/x.c b/x.c\n@@ -1,3 +1,4 @@\n-old line\n+new line\n+another\n",
    "    \n    \n\n        return;\n",
    "// SPDX-License-Identifier: MIT\n/* block\n * comment\n */\n",
]
for t in CODE:
    add(t, "code")
# Synthetic code: functions in several styles, with tabs or spaces.
NAMES = ["count", "total", "buf", "n_items", "userName", "MAX_LEN", "ptr", "i", "self", "ctx"]
OPS = [" + ", " - ", " * ", " / ", " % ", " << ", " && ", " || ", " == ", " != ", " >= "]
for k in range(70):
    ind = rng.choice(["\t", "    ", "  ", "\t\t"])
    nl = "\r\n" if k % 9 == 0 else "\n"
    a, b, c = rng.sample(NAMES, 3)
    op = rng.choice(OPS)
    style = k % 3
    if style == 0:
        body = [f"int f{k}(int {a}, int {b}) {{", f"{ind}int {c} = {a}{op}{b};",
                f"{ind}if ({c} > {k}) {{", f"{ind}{ind}return {c};", f"{ind}}}", f"{ind}return 0;", "}"]
    elif style == 1:
        body = [f"def f{k}({a}, {b}):", f"{ind}{c} = {a}{op}{b}", f"{ind}for x in range({k}):",
                f"{ind}{ind}{c} += x  # accumulate", f"{ind}return {c}"]
    else:
        body = [f"func F{k}({a}, {b} int) int {{", f"{ind}{c} := {a}{op}{b}",
                f"{ind}switch {{", f"{ind}case {c} < {k}:", f"{ind}{ind}return -1", f"{ind}}}",
                f"{ind}return {c}", "}"]
    add(nl.join(body) + nl, "code-tabs" if "\t" in ind else "code")

# ---- whitespace ------------------------------------------------------------------
for k in [1, 2, 3, 4, 5, 7, 8, 15, 16, 17, 31, 64]:
    add(" " * k, "spaces")
    add("a" + " " * k + "b", "spaces")
    add("word" + " " * k, "spaces")
    add("\n" * k, "newlines")
    add("\r\n" * k, "newlines")
    add("line" + "\n" * k + "next", "newlines")
    add("line" + "\r\n" * k + "next", "newlines")
    add("x" + " " * k + "\n" + " " * k + "y", "newlines")
for t in ["\t", "\t\t", " \t ", "\r", "\r\r\n", "\n\r", "a\tb\tc", "end \n", " \n \n ", "a \r\n b",
          "  leading", "trailing  ", "\u00a0non\u00a0breaking\u00a0", "ideographic\u3000space",
          "line\u2028separator\u2029para", "nel\u0085char", "mongolian\u180evowel", "zero\u200bwidth",
          "\u2003em space\u2009thin", " \u00a0 \u00a0", "\v\f vertical", "\n\n\n\nword\n\n\n\n",
          "a\n\n\n b", "  \n  \n\tx", "",
          # \s differs between regex engines here (HF uses Oniguruma: 9-D, 85, Zs, Zl, Zp)
          "x\u0085\u0085y", "a\u0085 b", "\ufeffBOM start", "x\ufeff\ufeffy", "x\u180e\u180ey",
          "a\u2028\u2028b", "x \u00a0\u00a0y", " \u3000\u3000z", "x\u200b\u200by", "q\u0085\n\u0085r",
          "\u2029\u2029", "x\u000b\u000cy", "end\u0085", "end\u00a0\u00a0"]:
    add(t, "whitespace")

# ---- numbers ---------------------------------------------------------------------
for t in ["0", "7", "42", "123", "1234", "12345", "1234567890", "3.14159", "-2.5e-10", "1,234,567.89",
          "1 000 000", "+1 (555) 123-4567", "2026-11-26T13:45:00Z", "v1.2.3-rc.4", "0x7FFF_FFFF",
          "100%", "$19.99", "\u00a342", "\u20ac1.000,50", "1/2 \u00bd \u2153 \u00be", "x\u00b2 + y\u00b3",
          "\u0661\u0662\u0663 \u0664\u0665\u0666", "\u0967\u0968\u0969", "\uff11\uff12\uff13", "\u2160\u2161\u2162 \u216b",
          "\u2460\u2461\u2462", "3rd 21st 100th", "pi=3.141592653589793238462643383279", "1e100", "007"]:
    add(t, "numbers")
for _ in range(20):
    add(str(rng.randrange(10 ** rng.randrange(1, 30))), "numbers")

# ---- contractions ----------------------------------------------------------------
base = ["it's", "don't", "we're", "they've", "I'm", "you'll", "he'd", "can't", "won't"]
for w in base:
    for variant in (w, w.upper(), w.title(), w.swapcase(), w.replace("'", "\u2019")):
        add(variant + " go", "contractions")
for t in ["'s", "'S", "'t 'T 're 'RE 'Re 'rE", "'ve 'VE 'm 'M 'll 'LL 'Ll 'd 'D", "''s", "'''", "x's y'S",
          "rock'n'roll", "O'Reilly's", "it\u017fs 'ſ", "'s'", " 's", "'sup", "'em", "y'all'd've",
          "DON'T YOU DARE", "I'M NOT SURE IT'S HE'D", "Don'T", "ʼs modifier apostrophe"]:
    add(t, "contractions")

# ---- scripts ---------------------------------------------------------------------
CHINESE = ["你好，世界！", "我爱北京天安门。", "机器学习是人工智能的一个分支。", "今天天气很好，我们去公园散步吧。",
           "中华人民共和国成立于1949年。", "这个模型有十七亿个参数。", "请把这段文字翻译成英文：“知识就是力量”。",
           "繁體中文與簡體中文不同。", "《红楼梦》是中国古典小说。", "一二三四五六七八九十百千万亿"]
JAPANESE = ["こんにちは、世界！", "東京は日本の首都です。", "カタカナとひらがなと漢字。", "私はラーメンが大好きです。",
            "ｶﾀｶﾅ 半角カナ", "日本語の文章を正しくトークン化する。", "ポケモンGOを遊んでいます。", "〜ですよね？"]
KOREAN = ["안녕하세요, 세계!", "한국어는 한글로 씁니다.", "서울은 대한민국의 수도입니다.", "저는 학생이에요.",
          "훈민정음", "오늘 날씨가 좋네요 ㅋㅋㅋ"]
ARABIC = ["مرحبا بالعالم", "اللغة العربية جميلة.", "أنا أحب القراءة والكتابة.", "القاهرة عاصمة مصر.",
          "بِسْمِ اللَّهِ الرَّحْمَٰنِ الرَّحِيمِ", "عدد ١٢٣ و 456"]
HINDI = ["नमस्ते दुनिया", "मैं हिंदी बोलता हूँ।", "भारत एक विशाल देश है।", "क़लम और ख़त", "संस्कृत भाषा प्राचीन है।",
         "यह एक परीक्षण वाक्य है।"]
OTHER = ["Привет, мир! Как дела?", "Γειά σου Κόσμε", "שלום עולם", "สวัสดีชาวโลก", "Xin chào thế giới",
         "Ça va? Déjà vu, naïve café, Straße, ﬁ ligature", "Zürich Ångström Øresund Łódź", "ሰላም ለዓለም",
         "Բարեւ աշխարհ", "გამარჯობა მსოფლიო", "Tiếng Việt có dấu: ắ ằ ẳ ẵ ặ"]
for kind, lst in [("chinese", CHINESE), ("japanese", JAPANESE), ("korean", KOREAN), ("arabic", ARABIC),
                  ("hindi", HINDI), ("other-scripts", OTHER)]:
    for t in lst:
        add(t, kind)
    for _ in range(6):
        a, b = rng.sample(lst, 2)
        add(a + " " + rng.choice(PROSE[:6]) + " " + b, kind + "-mixed")

# ---- emoji -----------------------------------------------------------------------
EMOJI = ["😀", "👍", "👍🏻", "👍🏽", "👍🏿", "👩‍💻", "👨‍👩‍👧‍👦", "🏳️‍🌈", "🇺🇸🇯🇵", "1️⃣", "❤️", "❤", "🧑🏾‍🚀",
         "👩🏼‍❤️‍💋‍👨🏻", "🤷‍♀️", "🫠", "🦀", "☕️", "©️®️™️", "🏴󠁧󠁢󠁳󠁣󠁴󠁿"]
for e in EMOJI:
    add(e, "emoji")
    add("I love it " + e + "!", "emoji")
for _ in range(10):
    add(" ".join(rng.choice(EMOJI) for _ in range(rng.randrange(2, 12))), "emoji")
add("".join(EMOJI) * 3, "emoji")

# ---- combining characters (NFC changes these) -------------------------------------
COMB = ["e\u0301", "cafe\u0301", "A\u030a", "\u212b", "\u2126", "o\u0308 u\u0308 a\u0308", "n\u0303",
        "a\u0323\u0302", "a\u0302\u0323", "\u1100\u1161\u11a8", "\u1112\u1161\u11ab\u1100\u1173\u11af",
        "\u0915\u093c", "\u0958", "\u1e9b\u0323", "\u0041\u030a\u0301", "e\u0301\u0301", "\u0301alone",
        "Ame\u0301lie et Zoe\u0308", "\u00c5\u212b\u0041\u030a", "\u0344", "\u0340\u0341", "\u0374",
        "\u037e", "\u0387", "\u1f71", "\u2000\u2001", "\u2329\u232a", "\uf900\ufa10", "\u30ab\u3099",
        "\u304b\u3099\u3055\u309a", "\u0627\u0653", "\u0648\u0654", "\u09c7\u09be", "\u0b47\u0b56"]
for t in COMB:
    add(t, "combining")
    add("word " + t + " word", "combining")

# ---- added tokens inside text ------------------------------------------------------
SPECIAL = ["<|im_start|>", "<|im_end|>", "<|endoftext|>", "<think>", "</think>", "<tool_call>",
           "</tool_call>", "<tool_response>", "</tool_response>", "<|fim_prefix|>", "<|vision_pad|>"]
for s in SPECIAL:
    add(s, "special")
    add("before" + s + "after", "special")
    add(" " + s + " ", "special")
for t in ["<|im_start|>user\nHello!<|im_end|>\n<|im_start|>assistant\n",
          "<think>\nLet me think.\n</think>\n\nThe answer is 4.",
          "<|im_start|><|im_end|><|im_start|>", "<<|im_end|>>", "<|im_start", "im_end|>", "<|im_end",
          "< |im_end| >", "<think><think></think>", "<|IM_END|>", "<|endoftext|><|endoftext|>",
          "text<|endoftext|>\n\nmore", "<tool_call>\n{\"name\": \"f\", \"arguments\": {}}\n</tool_call>",
          "a<|fim_prefix|>b<|fim_suffix|>c<|fim_middle|>", "\u00e9<|im_end|>e\u0301"]:
    add(t, "special")

# ---- random mixtures ---------------------------------------------------------------
POOLS = [
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ",
    "0123456789",
    " \t\n\r",
    "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~",
    "你好世界中文字符汉语",
    "ひらがなカタカナ",
    "한국어글자",
    "مرحباعربي",
    "नमस्तेहिंदी",
    "😀👍🏽👩‍💻❤️",
    "\u0301\u0308\u0323",
    "éüñøßÆœ",
]
for _ in range(120):
    n = rng.randrange(1, 60)
    add("".join(rng.choice(rng.choice(POOLS)) for _ in range(n)), "random")
for _ in range(40):
    words = []
    for _ in range(rng.randrange(1, 20)):
        pool = rng.choice(POOLS[:2] + POOLS[4:9])
        words.append("".join(rng.choice(pool) for _ in range(rng.randrange(1, 10))))
    add(rng.choice([" ", "  ", "\n", ", ", "\t"]).join(words), "random-words")

# ---- long inputs -------------------------------------------------------------------
long_en = "\n\n".join(fortunes[170:400]) if fortunes else " ".join(PROSE) * 100
add(long_en[:40000], "long")
add("a" * 20000, "long")
add("ab" * 5000, "long")
add(" " * 10000, "long")
add("\n" * 5000 + "x", "long")
add("9" * 5000, "long")
add("".join(CHINESE) * 40, "long")
add("😀" * 3000, "long")
add("supercalifragilisticexpialidocious" * 300, "long")
add(("x = 1\n\t" * 2000), "long")

out = sys.stdout
for i, t in enumerate(texts):
    out.write(json.dumps({"i": i, "kind": t["kind"], "text": t["text"]}, ensure_ascii=False) + "\n")
print(f"{len(texts)} texts", file=sys.stderr)
