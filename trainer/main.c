/* The tga CLI (bring-up placeholder, replaced by the subcommand dispatcher). */
#include <stdio.h>
int main(void) { puts("tga"); return 0; }
